"""The one machine-readable line a worker logs when its start-up ends, and its one parser.

    MAR_WORKER {"event": "ready", "model": "digits_cnn", "version": "1.0", "device": "cuda:0", ...}
    MAR_WORKER {"event": "failed", "model": "digits_cnn", "version": "1.0", "error": "..."}

TorchServe copies a worker's output into logs/model_log.log with a prefix of its own; `mar
register`, `mar bench` and the GPU check read the lines back with `WorkerReport.parse_all`. A worker
logs its traceback before its `failed` line, so a reader that sees the line has the whole error.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

__all__ = ["WorkerReport"]

_MARKER = "MAR_WORKER "
_LINE = re.compile(re.escape(_MARKER) + r"(\{.*\})")


@dataclass(frozen=True)
class WorkerReport:
    event: str  # "ready" or "failed"
    model: str
    version: str
    device: str | None = None  # "cpu" or "cuda:<id>"
    precision: str | None = None
    golden_max_error: float | None = None
    load_seconds: float | None = None
    resident_growth_bytes: int | None = None  # peak resident memory while loading, minus before
    weights_bytes: int | None = None
    gpu_allocated_bytes: int | None = None
    error: str | None = None  # "failed": the exception's type and message

    def log_line(self) -> str:
        return _MARKER + json.dumps({k: v for k, v in asdict(self).items() if v is not None},
                                    sort_keys=True)

    @classmethod
    def parse_all(cls, log_text: str) -> list["WorkerReport"]:
        """Every report in `log_text` (a model log, or a worker's own output), in order."""
        return [cls(**json.loads(match)) for match in _LINE.findall(log_text)]

    @property
    def memory_over_weights(self) -> float | None:
        if self.resident_growth_bytes is None or not self.weights_bytes:
            return None
        return self.resident_growth_bytes / self.weights_bytes

    def summary(self) -> str:
        """The same facts for a person reading the log."""
        if self.event == "failed":
            return f"model {self.model} {self.version} failed to start: {self.error}"
        return (f"model {self.model} {self.version} ready on {self.device} at {self.precision}; "
                f"golden check max abs error {self.golden_max_error:.3g}; loaded in "
                f"{self.load_seconds:.2f} s; resident +{self.resident_growth_bytes / 2**20:.1f} MiB "
                f"({self.memory_over_weights:.2f}x the weights); GPU "
                f"{(self.gpu_allocated_bytes or 0) / 2**20:.1f} MiB")
