"""`mar bench`: our pipeline against stock TorchServe on the same weights, in one run, as ratios.

    build       builds.py       mar build vs torch-model-archiver vs copying the weights
    cold-start  cold_start.py   register -> first answer, ours vs stock vs TorchServe's floor; memory
    throughput  throughput.py   the demo CNN under ab and wrk: ours vs stock BaseHandler vs forward only
                                vs a no-op ceiling, JSON and binary v2; where a batch's time goes
    protocols   protocols.py    the same OIP tensors as JSON and as binary
    images      images.py       JPEG bodies into ResNet-18, ours vs the stock image_classifier
    hostile     hostile.py      valid requests' latency beside 10% hostile ones; a 5 MB text's cost
    repository  repository.py   signed publish and verified pull on loopback S3 vs boto3 + sha256sum
    detection   detection.py    a detector on JPEGs of mixed sizes at batch 1 and at its batch size

`mar bench --runtimes` (runtimes.py) compares eager with the exported runtimes instead, and
gpu_check.py makes the GPU table. The load generators are in drivers.py, the stock and no-op
archives in archives.py, the shared report in report.py. Each measurement runs once to warm up,
then --repeats times; the median is reported.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from handlers.errors import UsageError
from scripts.bench import (builds, cold_start, detection, hostile, images, protocols,
                           repository, throughput)
from scripts.bench.archives import make_bench_model
from scripts.bench.drivers import ab_run, wrk_run
from scripts.bench.harness import BenchRun
from scripts.bench.report import machine
from scripts.bench.runtimes import run_runtimes_bench
from scripts.config import private_env, read_config, write_private_config
from scripts.server import start_server, stop_server

__all__ = ["run_bench", "run_runtimes_bench", "PARTS", "make_bench_model", "ab_run", "wrk_run"]


@dataclass(frozen=True)
class _Part:
    module: ModuleType  # measure(run) and report(results)
    key: str  # its figures' key in the results
    needs_server: bool = True
    needs_load: bool = True  # skipped with --throughput-seconds 0


_PARTS = {
    "build": _Part(builds, "build", needs_server=False, needs_load=False),
    "cold-start": _Part(cold_start, "cold_start", needs_load=False),
    "throughput": _Part(throughput, "throughput"),
    "protocols": _Part(protocols, "protocols"),
    "images": _Part(images, "images"),
    "hostile": _Part(hostile, "hostile"),
    "repository": _Part(repository, "repository", needs_server=False, needs_load=False),
    "detection": _Part(detection, "detection"),
}
PARTS = tuple(_PARTS)


def run_bench(*, size_mb: int, repeats: int, out: Path, throughput_s: float,
              concurrency: list[int], parts: tuple[str, ...] = PARTS,
              workdir: Path | None = None) -> dict:
    """Run the measurements in `parts`, print the tables, write the JSON to `out`; returns them.
    Raises UsageError for a part that does not exist."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise UsageError(f"unknown bench part {', '.join(unknown)}; the parts are {', '.join(PARTS)} "
                         f"(e.g. --parts throughput hostile)")
    chosen = [_PARTS[name] for name in PARTS if name in parts
              and (throughput_s > 0 or not _PARTS[name].needs_load)]
    with tempfile.TemporaryDirectory(prefix="mar-bench-") as scratch:
        root = Path(workdir or scratch)
        env = private_env(root)
        config = read_config(write_private_config(root))
        config.model_store.mkdir(parents=True, exist_ok=True)
        run = BenchRun(config, root, make_bench_model(root, size_mb), throughput_s, concurrency,
                       repeats)
        results = {"machine": machine(), "size_mb": size_mb, "weights_bytes": run.model["bytes"],
                   "repeats": repeats}
        _measure([p for p in chosen if not p.needs_server], run, results)
        start_server(config, env=env, restore=False)
        try:
            _measure([p for p in chosen if p.needs_server], run, results)
        finally:
            stop_server(config, env=env)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {out}")
    return results


def _measure(parts: list[_Part], run: BenchRun, results: dict) -> None:
    for part in parts:
        results[part.key] = part.module.measure(run)
        part.module.report(results)
