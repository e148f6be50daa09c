"""What every benchmark part is given: the private TorchServe, a scratch folder, the sized model
and the run settings. A part is a module with `measure(run) -> dict` (its figures, kept in the
results JSON) and `report(results)` (its table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts.config import ServerConfig

__all__ = ["BenchRun"]


@dataclass(frozen=True)
class BenchRun:
    config: ServerConfig  # the private TorchServe the parts register into
    root: Path  # scratch: each part makes its own folder here
    model: dict  # the sized MLP (scripts/bench/archives.py make_bench_model)
    seconds: float  # each load run's length
    concurrency: list[int]
    repeats: int  # timed runs per measurement, after a warm-up
