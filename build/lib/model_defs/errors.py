"""The base of every error a user can cause, on the lowest floor of the house: model_defs raises
ArchitectureError, and everything above (handlers/errors.py, scripts/) builds on MarError."""

__all__ = ["MarError", "ArchitectureError"]


class MarError(Exception):
    """A failure the user can act on; the message names the value, the rule and the fix."""


class ArchitectureError(MarError):
    """An architecture name that is not registered, or parameters its constructor does not take."""
