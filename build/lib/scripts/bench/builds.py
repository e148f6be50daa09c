"""build: `mar build` (validation, golden batch and hashing included) vs torch-model-archiver's
default format (and its zip-store format) vs a plain copy of the weights, and cp + sha256sum.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path

from scripts.bench.archives import stock_archive
from scripts.bench.harness import BenchRun
from scripts.build import build_archive

__all__ = ['measure', 'report']


def measure(run: BenchRun) -> dict:
    return _bench_builds(run.model, run.root, run.repeats)


def _bench_builds(model: dict, root: Path, repeats: int) -> dict:
    variants = {
        "mar build": lambda out: build_archive(model["spec"], export_path=out),
        "torch-model-archiver (default)": lambda out: stock_archive(model, out, "default"),
        "torch-model-archiver (zip-store)": lambda out: stock_archive(model, out, "zip-store"),
        "plain copy of the weights": lambda out: shutil.copyfile(model["weights"], out / "copy.pt"),
        "cp + sha256sum of the weights": lambda out: _hashed_copy(model["weights"], out / "copy.pt"),
    }
    return {name: _median_time(lambda: _fresh_dir(root / "builds"), action, repeats)
            for name, action in variants.items()}


def _hashed_copy(source: Path, target: Path) -> None:
    """The floor of a build that writes the weights once and hashes them: cp, then sha256sum."""
    subprocess.run(["cp", str(source), str(target)], check=True)
    subprocess.run(["sha256sum", str(target)], check=True, capture_output=True)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _median_time(setup, action, repeats: int) -> dict:
    """Run `action(setup())` once to warm up, then `repeats` times; seconds per run."""
    times = []
    for attempt in range(repeats + 1):
        argument = setup()
        started = time.perf_counter()
        action(argument)
        if attempt:  # the first run warms the page cache
            times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "runs_s": times}


def report(results: dict) -> None:
    build = results["build"]
    ours = build["mar build"]["median_s"]
    print(f"\nbuild, {results['weights_bytes'] / 2**30:.2f} GiB fp32 weights "
          f"(median of {results['repeats']})")
    for name, timing in build.items():
        print(f"  {name:<36} {timing['median_s']:7.2f} s   {timing['median_s'] / ours:6.1f}x ours")
