"""TorchServe's model log (`logs/model_log.log`), read from an offset: what workers printed.

TorchServe prefixes each line a worker prints, e.g.

    2026-11-29T22:00:00,123 [INFO ] W-9000-digits_cnn_1.0-stdout MODEL_LOG - <the worker's text>

and writes the log asynchronously, a moment after the worker printed it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from handlers.worker_report import WorkerReport

__all__ = ["ModelLog"]

_WORKER_LINE = re.compile(r"W-\d+-(?P<model>.+?)_(?P<version>[^_\s]+)-std(?:out|err) MODEL_LOG - "
                          r"(?P<text>.*)")


class ModelLog:
    """The part of a model log written after this object was made (or after `offset`)."""

    def __init__(self, path: Path, offset: int | None = None) -> None:
        self.path = path
        self.offset = offset if offset is not None else (path.stat().st_size if path.exists() else 0)

    def text(self) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as log:
            log.seek(self.offset if self.path.stat().st_size >= self.offset else 0)  # rotated?
            return log.read().decode(errors="replace")

    def worker_lines(self, name: str, version: str) -> list[str]:
        """What the workers of one model version printed, without TorchServe's prefixes."""
        return [m["text"] for m in _WORKER_LINE.finditer(self.text())
                if m["model"] == name and m["version"] == version]

    def worker_reports(self) -> list[WorkerReport]:
        """Every worker's ready report, in order."""
        return WorkerReport.parse_all(self.text())

    def worker_error(self, name: str, version: str) -> str:
        """The first traceback a worker of this model printed, without log prefixes.

        The first one is the start-up failure; TorchServe's worker then prints a second, generic
        one ("500 - Unknown exception") after "Backend worker process died.".
        """
        lines = self.worker_lines(name, version)
        start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), None)
        if start is None:
            return "\n".join(lines[-20:]) or "(the model log holds no output from this model's worker)"
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(
            ("Traceback", "Backend worker process died", "MAR_WORKER "))), len(lines))
        return "\n".join(lines[start:end])

    def wait_for_worker_error(self, name: str, version: str, *, timeout_s: float = 60) -> str:
        """The worker's start-up error, once the log holds it whole: our handler logs its
        traceback and then a `failed` report; an error before the handler runs (an import) shows
        as TorchServe's traceback after "Backend worker process died.". Gives what the log holds
        when `timeout_s` runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            failed = any(r.event == "failed" and (r.model, r.version) == (name, version)
                         for r in self.worker_reports())
            died = _died_with_traceback(self.worker_lines(name, version))
            if failed or died or time.monotonic() > deadline:
                return self.worker_error(name, version)
            time.sleep(0.2)


def _died_with_traceback(lines: list[str]) -> bool:
    """Whether TorchServe's worker said it died and printed its whole traceback after that (the
    exception's own line, unindented, ends it)."""
    died = next((i for i, line in enumerate(lines)
                 if line.startswith("Backend worker process died")), None)
    if died is None:
        return False
    start = next((i for i in range(died, len(lines)) if lines[i].startswith("Traceback")), None)
    return start is not None and any(line and not line[0].isspace() for line in lines[start + 1:])
