"""Every error a user can cause, under one base: `mar` reports a MarError as its message alone and
lets anything else (a bug) show its traceback. Each message names the offending value, the rule
it breaks and the fix; the type says which part of the pipeline refused.

The base and ArchitectureError live in model_defs/errors.py, the floor below, so model_defs needs
nothing from here.
"""

from __future__ import annotations

from typing import Any

from model_defs.errors import ArchitectureError, MarError

__all__ = ["MarError", "SpecError", "ArchitectureError", "WeightsError", "IntegrityError",
           "RequestError", "ExportError", "PrecisionError", "ServerError", "TorchServeError",
           "RepositoryError", "KServeError", "BenchError", "UsageError"]


class SpecError(MarError):
    """A spec file breaks a rule; the message names the file, every offending key and the fix."""


class WeightsError(MarError):
    """The weights file cannot be loaded into the architecture; the message says why and the fix."""


class IntegrityError(MarError):
    """The archive differs from what `mar build` wrote, or the model no longer reproduces its
    golden outputs; the message names the file or the error and the fix."""


class RequestError(MarError):
    """A request that does not follow the model's input contract (answered with HTTP 400)."""


class ExportError(MarError):
    """The spec's `serving.runtime` cannot be built from this model here: the exporter, the
    check against eager or the build host refused; nothing was written."""


class PrecisionError(MarError):
    """A reduced precision fails its accuracy gate against fp32 eager (the figures are in the
    message), or its calibration or evaluation samples cannot be read; nothing was written."""


class ServerError(MarError):
    """TorchServe cannot be started, reached or configured, or refuses what was asked of it."""


class TorchServeError(ServerError):
    """TorchServe answered a call with an error; carries its answer (`response`)."""

    def __init__(self, action: str, response: Any, hint: str = "") -> None:
        super().__init__(f"{action} failed (HTTP {response.status}): {response.message}"
                         + (f". {hint}" if hint else ""))
        self.response = response


class RepositoryError(MarError):
    """A model repository (a folder, S3, HTTPS) refuses a publish or a pull."""


class KServeError(MarError):
    """The KServe layout cannot be exported as asked."""


class BenchError(MarError):
    """A benchmark cannot run here (a missing load generator) or got no result."""


class UsageError(MarError):
    """Command-line arguments that break a rule of the command."""
