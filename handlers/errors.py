"""Every error a user can cause, under one base: `mar` reports a MarError as its message alone and
lets anything else (a bug) show its traceback.

Each message names the offending value, the rule it breaks and the fix.
"""

__all__ = ["MarError", "SpecError", "ArchitectureError", "WeightsError", "IntegrityError",
           "RequestError"]


class MarError(Exception):
    """A failure the user can act on; the message names the value, the rule and the fix."""


class SpecError(MarError):
    """A spec file breaks a rule; the message names the file, every offending key and the fix."""


class ArchitectureError(MarError):
    """An architecture name that is not registered, or parameters its constructor does not take."""


class WeightsError(MarError):
    """The weights file cannot be loaded into the architecture; the message says why and the fix."""


class IntegrityError(MarError):
    """The archive differs from what `mar build` wrote, or the model no longer reproduces its
    golden outputs; the message names the file or the error and the fix."""


class RequestError(MarError):
    """A request that does not follow the model's input contract (answered with HTTP 400)."""
