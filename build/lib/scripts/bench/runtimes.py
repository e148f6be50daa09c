"""`mar bench --runtimes`: eager against its exported artifacts (TorchScript, ONNX, AOTInductor) per
model: build time, archive size, cold start, and requests/s with p50/p99 under wrk with binary v2
requests, at the spec's batching, one worker; runtimes interleaved round by round.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from handlers.errors import BenchError, MarError
from scripts.bench.cold_start import cold_start
from scripts.bench.drivers import median_run, wrk_run
from scripts.bench.report import machine
from scripts.build import build_archive
from scripts.client import TorchServeClient, oip_request
from scripts.config import (DEMO_SPEC, REPO_ROOT, ServerConfig, private_env, read_config,
                            write_private_config)
from scripts.server import start_server, stop_server

__all__ = ['run_runtimes_bench', 'binary_request', 'sample_shape']


def run_runtimes_bench(*, models: tuple[str, ...], runtimes: tuple[str, ...], seconds: float,
                       concurrency: int, repeats: int, out: Path) -> dict:
    """Per model and runtime: build time, archive size, cold start (register -> first answer),
    requests/s and p50/p99 under wrk with binary v2 requests (so the model, not JSON, is timed),
    at the spec's batching, one worker; runtimes interleaved round by round."""
    if shutil.which("wrk") is None:
        raise BenchError("`mar bench --runtimes` drives the server with wrk: `sudo apt-get install wrk`.")
    results: dict = {"machine": machine(), "seconds": seconds, "concurrency": concurrency,
                     "repeats": repeats, "models": {}}
    with tempfile.TemporaryDirectory(prefix="mar-bench-runtimes-") as scratch:
        root = Path(scratch)
        env = private_env(root)
        config = read_config(write_private_config(root))
        config.model_store.mkdir(parents=True, exist_ok=True)
        start_server(config, env=env, restore=False)
        try:
            for model in models:
                results["models"][model] = _bench_model_runtimes(config, root, model, runtimes,
                                                                 seconds, concurrency, repeats)
                _print_runtimes(model, results["models"][model], concurrency)
        finally:
            stop_server(config, env=env)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {out}")
    return results


def _bench_model_runtimes(config: ServerConfig, root: Path, model: str, runtimes: tuple[str, ...],
                          seconds: float, concurrency: int, repeats: int) -> dict:
    folder = root / model
    folder.mkdir()
    data, arch_params = _runtime_spec(model)
    from model_defs import create_model

    torch.manual_seed(0)
    torch.save(create_model(data["arch"], **arch_params).state_dict(), folder / "weights.pt")
    rows: dict[str, dict] = {}
    for runtime in runtimes:
        spec = {**data, "name": f"{model}_{runtime}", "weights": "weights.pt",
                "serving": {**data["serving"], "runtime": runtime, "response_timeout_s": 600}}
        (folder / f"{runtime}.yaml").write_text(yaml.safe_dump(spec))
        started = time.perf_counter()
        try:
            archive = build_archive(folder / f"{runtime}.yaml", export_path=config.model_store).archive
        except MarError as err:
            rows[runtime] = {"refused": str(err).split(": ", 1)[-1][:300]}
            continue
        rows[runtime] = {"build_s": time.perf_counter() - started,
                         "archive_mb": archive.stat().st_size / 1e6, "cold_s": [], "runs": []}
    body, header = binary_request(root / model, sample_shape(data))
    probe = body.read_bytes()
    for _ in range(repeats):  # interleaved: every runtime once per round
        for runtime, row in rows.items():
            if "refused" in row:
                continue
            name = f"{model}_{runtime}"
            row["cold_s"].append(cold_start(config, name, f"{name}-1.0.mar", probe, keep=True,
                                            v2_json_length=header)["seconds"])
            path = f"/v2/models/{name}/infer"
            headers = {"Inference-Header-Content-Length": str(header)}
            wrk_run(config, path, body=body, level=concurrency, seconds=min(seconds, 3),
                    content_type="application/octet-stream", headers=headers)  # warm-up
            row["runs"].append(wrk_run(config, path, body=body, level=concurrency, seconds=seconds,
                                       content_type="application/octet-stream", headers=headers))
            TorchServeClient(config).unregister(name)
    for row in rows.values():
        if "refused" not in row:
            row.update(median_run(row.pop("runs")), cold_start_s=statistics.median(row["cold_s"]))
    return rows


def _runtime_spec(model: str) -> tuple[dict, dict]:
    path = DEMO_SPEC if model == "digits" else REPO_ROOT / "model_defs" / "specs" / f"{model}.yaml"
    data = yaml.safe_load(path.read_text())
    data.pop("labels", None)  # the model's own outputs are what the runtimes are compared on
    return data, data.get("params", {})


def sample_shape(data: dict) -> list[int]:
    return (data.get("input") or data["inputs"][0])["shape"]


def binary_request(folder: Path, shape: list[int]) -> tuple[Path, int]:
    """A seeded one-sample binary v2 request for a model of sample `shape`, asking for binary
    outputs, written to `folder`; returns the file and its JSON header's length."""
    values = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1)).numpy()
    body, headers = oip_request({"input": values}, binary=True, binary_output=True)
    path = folder / "request.bin"
    path.write_bytes(body)
    return path, int(headers["Inference-Header-Content-Length"])


def _print_runtimes(model: str, rows: dict, concurrency: int) -> None:
    eager = rows.get("eager", {})
    print(f"\nruntimes, {model}, c={concurrency}, binary v2 requests, 1 worker")
    print(f"  {'runtime':<12} {'req/s':>8} {'x eager':>8} {'p50 ms':>7} {'p99 ms':>7} {'cold s':>7} "
          f"{'x eager':>8} {'MB':>6} {'build s':>8}")
    for runtime, row in rows.items():
        if "refused" in row:
            print(f"  {runtime:<12} refused at build: {row['refused'][:150]}")
            continue
        rate = row["requests_per_s"] / eager["requests_per_s"] if "requests_per_s" in eager else 0
        cold = row["cold_start_s"] / eager["cold_start_s"] if "cold_start_s" in eager else 0
        print(f"  {runtime:<12} {row['requests_per_s']:8.1f} {rate:8.2f} {row['p50_ms']:7.1f} "
              f"{row['p99_ms']:7.1f} {row['cold_start_s']:7.2f} {cold:8.2f} {row['archive_mb']:6.1f} "
              f"{row['build_s']:8.1f}")
