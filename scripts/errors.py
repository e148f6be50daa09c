"""The one exception type the `mar` command reports as a plain message instead of a traceback."""

__all__ = ["MarError"]


class MarError(Exception):
    """A failure the user can act on; the message names the value, the rule and the fix."""
