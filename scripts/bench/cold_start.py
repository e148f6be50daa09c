"""cold start: from the management API register call to the first successful prediction, on one
running TorchServe: our .mar and folder archives vs the stock eager archive vs a no-op handler
carrying the same bytes (TorchServe's floor); and the worker's memory growth over the weights.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import yaml

from handlers.errors import ServerError
from scripts.bench.archives import ASSETS, stock_archive
from scripts.bench.harness import BenchRun
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import ServerConfig
from scripts.model_log import ModelLog

__all__ = ['measure', 'report', 'cold_start']


def measure(run: BenchRun) -> dict:
    return _bench_cold_starts(run.config, run.model, run.root, run.repeats)


def _bench_cold_starts(config: ServerConfig, model: dict, root: Path, repeats: int) -> dict:
    store = config.model_store
    ours = build_archive(model["spec"], export_path=store).archive
    ours_folder = build_archive(_spec_copy(model, root, "bench_folder"), export_path=store,
                                archive_format="folder").archive
    stock_archive(model, store, "default", name="stock_default")
    stock_archive(model, store, "zip-store", name="stock_zipstore")
    stock_archive(model, store, "zip-store", name="noop_floor", handler=ASSETS / "noop_handler.py",
                   model_file=False)
    probe = json.dumps({"inputs": [0.5] * model["width"]}).encode()
    variants = {
        "ours (.mar)": ("bench_ours", ours.name),
        "ours (folder)": ("bench_folder", ours_folder.name),
        "stock eager (default .mar)": ("stock_default", "stock_default.mar"),
        "stock eager (zip-store .mar)": ("stock_zipstore", "stock_zipstore.mar"),
        "TorchServe floor (no-op, zip-store)": ("noop_floor", "noop_floor.mar"),
    }
    # Interleaved round by round after a warm-up round, so no variant always runs first (right
    # after the builds) or last.
    runs: dict[str, list[dict]] = {label: [] for label in variants}
    for round_index in range(repeats + 1):
        for label, (name, url) in variants.items():
            run = cold_start(config, name, url, probe)
            if round_index > 0:
                runs[label].append(run)
    results = {}
    for label, rows in runs.items():
        memory = [r["memory_ratio"] for r in rows if r["memory_ratio"] is not None]
        results[label] = {"median_s": statistics.median(r["seconds"] for r in rows),
                          "runs_s": [r["seconds"] for r in rows],
                          "memory_growth_over_weights": max(memory) if memory else None}
    return results


def _spec_copy(model: dict, root: Path, name: str) -> Path:
    spec = yaml.safe_load(model["spec"].read_text())
    spec["name"] = name
    path = model["folder"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cold_start(config: ServerConfig, name: str, url: str, probe: bytes, *, keep: bool = False,
               v2_json_length: int | None = None) -> dict:
    """Seconds from the register call to the first 200 for `probe` (a JSON prediction, or a binary
    v2 request whose JSON header is `v2_json_length` bytes), and the worker's report line with its
    memory growth over the weights; unregisters the model afterwards unless `keep`."""
    client = TorchServeClient(config)
    log = ModelLog(config.model_log)
    send = (lambda: client.predict(name, probe, check=False)) if v2_json_length is None else \
        (lambda: client.infer_v2(name, probe, json_length=v2_json_length, check=False))
    # Write back what earlier steps left dirty (GiBs of archives), or the kernel throttles this
    # run's unpacking to flush it and the time lands on whichever variant comes next.
    os.sync()
    started = time.perf_counter()
    client.register(url, initial_workers=1)
    while (answer := send()).status != 200:
        if time.perf_counter() - started > 600:
            raise ServerError(f"bench: {name} never answered: HTTP {answer.status} {answer.message}")
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    if not keep:
        client.unregister(name)
        # Let the old worker exit and TorchServe delete the extracted copy: freeing a GiB of
        # mappings and files must not land in the next measurement.
        time.sleep(2.0)
    reports = [r for r in log.worker_reports() if r.model == name and r.event == "ready"]
    return {"seconds": seconds, "memory_ratio": reports[-1].memory_over_weights if reports else None,
            "report": reports[-1] if reports else None}


def report(results: dict) -> None:
    cold = results["cold_start"]
    ours = cold["ours (.mar)"]["median_s"]
    floor = cold["TorchServe floor (no-op, zip-store)"]["median_s"]
    print("\ncold start: register call -> first successful prediction")
    for name, timing in cold.items():
        memory = timing["memory_growth_over_weights"]
        print(f"  {name:<38} {timing['median_s']:7.2f} s   {timing['median_s'] / ours:5.2f}x ours"
              f"   {timing['median_s'] / floor:5.2f}x floor"
              + (f"   memory +{memory:.2f}x weights" if memory is not None else ""))
