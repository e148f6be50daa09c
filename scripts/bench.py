"""`mar bench`: our build and cold start against stock TorchServe, on the same weights, in one run.

- build: `mar build` (validation, golden batch and hashing included) vs torch-model-archiver's default
  format (and its zip-store format) vs a plain copy of the weights;
- cold start: from the management API register call to the first successful prediction, on one
  running TorchServe: our .mar and folder archives vs the stock eager archive (`--model-file` +
  `--serialized-file`, TorchServe's BaseHandler) vs a no-op handler carrying the same bytes
  (TorchServe's own floor: extracting the archive and starting a worker);
- memory: the worker's resident-memory growth while loading (peak minus before), over the weights;
- throughput: the demo model under `ab` at each concurrency, our handler vs a stock BaseHandler
  archive vs a no-op handler with the same batching (TorchServe's ceiling on this machine).

The model is an MLP of four square Linear layers sized to --size-mb. Each measurement runs once to
warm up (page cache, JIT), then --repeats times; the median is reported.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml

from handlers.spec import load_spec
from scripts.bench_hostile import bench_hostile, print_hostile
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import (DEMO_SPEC, REPO_ROOT, ServerConfig, private_env, read_config,
                            write_private_config)
from handlers.errors import BenchError, MarError, ServerError, UsageError
from scripts.model_log import ModelLog
from scripts.server import start_server, stop_server

__all__ = ["run_bench", "make_bench_model", "cold_start", "ab_run"]

ASSETS = Path(__file__).resolve().parent / "bench_assets"
# The stock handlers log the same report line as ours; torch-model-archiver packs this beside them.
WORKER_REPORT = REPO_ROOT / "handlers" / "worker_report.py"


PARTS = ("build", "cold-start", "throughput", "protocols", "images", "hostile")


def run_bench(*, size_mb: int, repeats: int, out: Path, throughput_s: float,
              concurrency: list[int], parts: tuple[str, ...] = PARTS,
              workdir: Path | None = None) -> dict:
    """Run the measurements in `parts`, print the tables, write the JSON to `out`; returns them.
    Raises MarError for a part that does not exist."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise UsageError(f"unknown bench part {', '.join(unknown)}; the parts are {', '.join(PARTS)} "
                       f"(e.g. --parts throughput hostile)")
    with tempfile.TemporaryDirectory(prefix="mar-bench-") as scratch:
        root = Path(workdir or scratch)
        env = private_env(root)
        config = read_config(write_private_config(root))
        config.model_store.mkdir(parents=True, exist_ok=True)
        model = make_bench_model(root, size_mb)
        results = {"machine": _machine(), "size_mb": size_mb, "weights_bytes": model["bytes"],
                   "repeats": repeats}
        if "build" in parts:
            results["build"] = _bench_builds(model, root, repeats)
            _print_build(results)
        start_server(config, env=env, restore=False)
        try:
            if "cold-start" in parts:
                results["cold_start"] = _bench_cold_starts(config, model, root, repeats)
                _print_cold_start(results)
            if "throughput" in parts and throughput_s > 0:
                results["throughput_serving"] = _demo_serving()
                results["throughput"] = _bench_throughput(config, root, throughput_s, concurrency,
                                                          repeats)
                _print_throughput(results)
            if "protocols" in parts and throughput_s > 0:
                results["protocols"] = _bench_protocols(config, root, throughput_s, concurrency,
                                                        repeats)
                _print_protocols(results)
            if "images" in parts and throughput_s > 0:
                results["images"] = _bench_images(config, root, throughput_s, repeats)
                _print_images(results)
            if "hostile" in parts and throughput_s > 0:
                results["hostile"] = bench_hostile(config, root, throughput_s, repeats)
                print_hostile(results)
        finally:
            stop_server(config, env=env)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {out}")
    return results


# ---- the model under test ----

def make_bench_model(root: Path, size_mb: int) -> dict:
    """An MLP of four width x width Linear layers whose fp32 state_dict is about size_mb."""
    width = max(64, int(math.sqrt(size_mb * 2**20 / 16)) // 64 * 64)
    params = {"in_features": width, "hidden_sizes": [width] * 3, "out_features": width}
    folder = root / "bench_model"
    folder.mkdir()
    layers = [torch.nn.Linear(width, width) for _ in range(4)]
    state = {}
    for i, layer in enumerate(layers):
        state[f"layers.{3 * i}.weight"] = layer.weight.detach()
        state[f"layers.{3 * i}.bias"] = layer.bias.detach()
    torch.save(state, folder / "weights.pt")
    spec = {"name": "bench_ours", "version": "1.0", "arch": "mlp", "params": params,
            "weights": "weights.pt", "input": {"shape": [width]},
            "serving": {"batch_size": 1, "response_timeout_s": 600}}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (folder / "model.py").write_text(_stock_mlp_source(width))
    return {"folder": folder, "spec": folder / "spec.yaml", "weights": folder / "weights.pt",
            "width": width, "bytes": (folder / "weights.pt").stat().st_size}


def _stock_mlp_source(width: int) -> str:
    """The same network as a stock `--model-file`: one class, no constructor arguments."""
    return f'''import torch
from torch import nn


class BenchMLP(nn.Module):
    def __init__(self):
        super().__init__()
        w = {width}
        self.layers = nn.Sequential(
            nn.Linear(w, w), nn.ReLU(), nn.Dropout(0.0),
            nn.Linear(w, w), nn.ReLU(), nn.Dropout(0.0),
            nn.Linear(w, w), nn.ReLU(), nn.Dropout(0.0),
            nn.Linear(w, w))

    def forward(self, x):
        return self.layers(x)
'''


# ---- build ----

def _bench_builds(model: dict, root: Path, repeats: int) -> dict:
    variants = {
        "mar build": lambda out: build_archive(model["spec"], export_path=out),
        "torch-model-archiver (default)": lambda out: _stock_archive(model, out, "default"),
        "torch-model-archiver (zip-store)": lambda out: _stock_archive(model, out, "zip-store"),
        "plain copy of the weights": lambda out: shutil.copyfile(model["weights"], out / "copy.pt"),
        "cp + sha256sum of the weights": lambda out: _hashed_copy(model["weights"], out / "copy.pt"),
    }
    return {name: _median_time(lambda: _fresh_dir(root / "builds"), action, repeats)
            for name, action in variants.items()}


def _stock_archive(model: dict, export: Path, archive_format: str, *, name: str = "bench_stock",
                   handler: Path = ASSETS / "stock_handler.py", model_file: bool = True,
                   config_file: Path | None = None) -> Path:
    """An archive made the stock way, by torch-model-archiver itself."""
    from model_archiver import ModelArchiver, ModelArchiverConfig

    ModelArchiver.generate_model_archive(ModelArchiverConfig(
        model_name=name, version="1.0", handler=str(handler),
        model_file=str(model["folder"] / "model.py") if model_file else None,
        serialized_file=str(model["weights"]), export_path=str(export),
        archive_format=archive_format, force=True, extra_files=str(WORKER_REPORT),
        config_file=str(config_file) if config_file else None))
    return export / f"{name}.mar"


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


# ---- cold start ----

def _bench_cold_starts(config: ServerConfig, model: dict, root: Path, repeats: int) -> dict:
    store = config.model_store
    ours = build_archive(model["spec"], export_path=store).archive
    ours_folder = build_archive(_spec_copy(model, root, "bench_folder"), export_path=store,
                                archive_format="folder").archive
    _stock_archive(model, store, "default", name="stock_default")
    _stock_archive(model, store, "zip-store", name="stock_zipstore")
    _stock_archive(model, store, "zip-store", name="noop_floor", handler=ASSETS / "noop_handler.py",
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


# ---- throughput ----

def _bench_throughput(config: ServerConfig, root: Path, seconds: float, concurrency: list[int],
                      rounds: int) -> dict:
    """Each variant under ab, interleaved round by round (load on a 2-core machine drifts by
    +-20% over minutes, so variants are compared inside each round); median per variant."""
    if shutil.which("ab") is None:
        raise BenchError("the throughput benchmark drives the server with ApacheBench (`ab`), which "
                       "is not installed: `sudo apt-get install apache2-utils`, or pass "
                       "--throughput-seconds 0 to skip it.")
    archives = _throughput_archives(config, root)
    names = {label: name for label, (name, _) in archives.items()}
    body = root / "digit.json"
    body.write_text(json.dumps({"inputs": [[[0.5] * 8] * 8]}))
    client = TorchServeClient(config)
    for _, url in archives.values():
        client.register(url, initial_workers=1)
    runs: dict = {str(level): {label: [] for label in names} for level in concurrency}
    try:
        for label, name in names.items():
            ab_run(config, name, body, max(concurrency), min(seconds, 3))  # warm-up
        for _ in range(rounds):
            for level in concurrency:
                for label, name in names.items():
                    runs[str(level)][label].append(ab_run(config, name, body, level, seconds))
    finally:
        for name in names.values():
            client.unregister(name)
    return {level: {label: _median_run(rows) for label, rows in variants.items()}
            for level, variants in runs.items()}


def _median_run(rows: list[dict]) -> dict:
    middle = sorted(rows, key=lambda row: row["requests_per_s"])[len(rows) // 2]
    return {**middle, "runs_requests_per_s": [row["requests_per_s"] for row in rows],
            "failed": sum(row["failed"] for row in rows)}


def _throughput_archives(config: ServerConfig, root: Path) -> dict[str, tuple[str, str]]:
    """The demo digits CNN three ways, all with the demo spec's batching: label -> (model name,
    archive in the store)."""
    from model_defs import create_model

    folder = root / "throughput"
    folder.mkdir()
    spec = _demo_spec()
    torch.manual_seed(0)
    model = create_model("digits_cnn", **spec["params"])
    torch.save(model.state_dict(), folder / "digits.pt")
    spec.update(name="tp_ours", weights="digits.pt")
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    ours = build_archive(folder / "spec.yaml", export_path=config.model_store).archive
    source = (REPO_ROOT / "model_defs" / "digits_cnn.py").read_text()
    stock_source = "\n".join(line for line in source.splitlines()
                             if "register_model" not in line)  # one class, default arguments
    (folder / "model.py").write_text(stock_source)
    # the same TorchServe settings our archive carries
    (folder / "model-config.yaml").write_text(yaml.safe_dump(
        load_spec(folder / "spec.yaml").serving.model_config()))
    stock = {"folder": folder, "weights": folder / "digits.pt"}
    for name, handler, model_file in (("tp_stock", "stock_handler.py", True),
                                      ("tp_noop", "noop_handler.py", False)):
        _stock_archive(stock, config.model_store, "zip-store", name=name, handler=ASSETS / handler,
                       model_file=model_file, config_file=folder / "model-config.yaml")
    return {"ours": ("tp_ours", ours.name), "stock BaseHandler": ("tp_stock", "tp_stock.mar"),
            "no-op ceiling": ("tp_noop", "tp_noop.mar")}


def _demo_spec() -> dict:
    return yaml.safe_load(DEMO_SPEC.read_text())


def _demo_serving() -> dict:
    serving = _demo_spec()["serving"]
    return {key: serving[key] for key in ("batch_size", "max_batch_delay_ms")}


# ---- protocols: the same tensors as JSON or binary ----

PROTOCOL_WIDTH = 8192  # floats in each request and each response


def _bench_protocols(config: ServerConfig, root: Path, seconds: float, concurrency: list[int],
                     rounds: int) -> dict:
    """One worker serving a cheap 8,192 -> 8,192 float model (so the protocol, not the model, is
    what costs), driven with the same Open Inference Protocol request as JSON tensors and as binary
    tensors (answers binary too), interleaved round by round."""
    if shutil.which("wrk") is None:
        raise BenchError("the protocols benchmark drives the server with wrk (ApacheBench misreads "
                       "the binary responses' Inference-Header-Content-Length as Content-Length): "
                       "`sudo apt-get install wrk`, or leave out --parts protocols.")
    folder = root / "protocols"
    folder.mkdir()
    params = {"in_features": PROTOCOL_WIDTH, "hidden_sizes": [16], "out_features": PROTOCOL_WIDTH}
    from model_defs import create_model

    torch.manual_seed(0)
    torch.save(create_model("mlp", **params).state_dict(), folder / "weights.pt")
    serving = _demo_serving()
    spec = {"name": "oip_bench", "version": "1.0", "arch": "mlp", "params": params,
            "weights": "weights.pt", "inputs": [{"name": "x", "shape": [PROTOCOL_WIDTH]}],
            "outputs": ["y"], "serving": {**serving, "response_timeout_s": 600}}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    archive = build_archive(folder / "spec.yaml", export_path=config.model_store).archive
    values = torch.rand(PROTOCOL_WIDTH, generator=torch.Generator().manual_seed(1))
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, PROTOCOL_WIDTH]}
    (folder / "json.json").write_text(json.dumps({"inputs": [{**tensor, "data": values.tolist()}]}))
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 4 * PROTOCOL_WIDTH}}],
                         "parameters": {"binary_data_output": True}}).encode()
    (folder / "binary.bin").write_bytes(header + values.numpy().astype("<f4").tobytes())
    variants = {
        "JSON tensors": dict(body=folder / "json.json"),
        "binary tensors": dict(body=folder / "binary.bin", content_type="application/octet-stream",
                               headers={"Inference-Header-Content-Length": str(len(header))}),
    }
    client = TorchServeClient(config)
    client.register(archive.name, initial_workers=1)
    runs: dict = {str(level): {label: [] for label in variants} for level in concurrency}
    path = "/v2/models/oip_bench/infer"
    try:
        for variant in variants.values():
            wrk_run(config, path, level=max(concurrency), seconds=min(seconds, 3), **variant)
        for _ in range(rounds):
            for level in concurrency:
                for label, variant in variants.items():
                    runs[str(level)][label].append(wrk_run(config, path, level=level,
                                                           seconds=seconds, **variant))
    finally:
        client.unregister("oip_bench")
    return {level: {label: _median_run(rows) for label, rows in variants_.items()}
            for level, variants_ in runs.items()}


# ---- runtimes: eager against its exported artifacts ----

def run_runtimes_bench(*, models: tuple[str, ...], runtimes: tuple[str, ...], seconds: float,
                       concurrency: int, repeats: int, out: Path) -> dict:
    """Per model and runtime: build time, archive size, cold start (register -> first answer),
    requests/s and p50/p99 under wrk with binary v2 requests (so the model, not JSON, is timed),
    at the spec's batching, one worker; runtimes interleaved round by round."""
    if shutil.which("wrk") is None:
        raise BenchError("`mar bench --runtimes` drives the server with wrk: `sudo apt-get install wrk`.")
    results: dict = {"machine": _machine(), "seconds": seconds, "concurrency": concurrency,
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
    body, header = _binary_request(root / model, _sample_shape(data))
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
            row.update(_median_run(row.pop("runs")), cold_start_s=statistics.median(row["cold_s"]))
    return rows


def _runtime_spec(model: str) -> tuple[dict, dict]:
    path = DEMO_SPEC if model == "digits" else REPO_ROOT / "model_defs" / "specs" / f"{model}.yaml"
    data = yaml.safe_load(path.read_text())
    data.pop("labels", None)  # the model's own outputs are what the runtimes are compared on
    return data, data.get("params", {})


def _sample_shape(data: dict) -> list[int]:
    return (data.get("input") or data["inputs"][0])["shape"]


def _binary_request(folder: Path, shape: list[int]) -> tuple[Path, int]:
    values = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1)).numpy()
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, *shape],
                                     "parameters": {"binary_data_size": values.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    body = folder / "request.bin"
    body.write_bytes(header + values.astype("<f4").tobytes())
    return body, len(header)


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


# ---- images: JPEG bodies into ResNet-18 ----

STOCK_IMAGE_CLASSIFIER_BLOCKED = (
    "TorchServe's stock image_classifier handler imports torchvision, and no torchvision imports "
    "beside this project's torch==2.13.0 CPU build (PyPI's torchvision 0.28 links libtorch_cuda)")


def _bench_images(config: ServerConfig, root: Path, seconds: float, rounds: int) -> dict:
    """Decode + preprocess cost per 640x480 JPEG, and requests/s with p50/p99 for JPEG bodies
    into ResNet-18 (model_defs/specs/resnet18_jpeg.yaml) at batch 8, one worker, 8 clients."""
    from handlers.kinds.image import preprocess
    from handlers.spec import load_spec
    from model_defs import create_model

    folder = root / "images"
    folder.mkdir()
    data = yaml.safe_load((REPO_ROOT / "model_defs" / "specs" / "resnet18_jpeg.yaml").read_text())
    torch.manual_seed(0)
    torch.save(create_model(data["arch"], **data["params"]).state_dict(), folder / "weights.pt")
    data.update(weights="weights.pt", serving={**data["serving"], "response_timeout_s": 600})
    (folder / "spec.yaml").write_text(yaml.safe_dump(data))
    archive = build_archive(folder / "spec.yaml", export_path=config.model_store).archive
    jpeg = folder / "photo.jpg"
    jpeg.write_bytes(_photo_jpeg())
    model_input = load_spec(folder / "spec.yaml").input
    preprocess(jpeg.read_bytes(), model_input, "warm-up")
    started = time.perf_counter()
    for _ in range(50):
        preprocess(jpeg.read_bytes(), model_input, "bench")
    per_image_ms = (time.perf_counter() - started) / 50 * 1000
    client = TorchServeClient(config)
    client.register(archive.name, initial_workers=1)
    path = f"/predictions/{data['name']}"
    try:
        wrk_run(config, path, body=jpeg, level=8, seconds=min(seconds, 3), content_type="image/jpeg")
        runs = [wrk_run(config, path, body=jpeg, level=8, seconds=seconds, content_type="image/jpeg")
                for _ in range(rounds)]
    finally:
        client.unregister(data["name"])
    return {"decode_preprocess_ms_per_image": per_image_ms, "jpeg_bytes": jpeg.stat().st_size,
            "ours": _median_run(runs), "stock image_classifier": STOCK_IMAGE_CLASSIFIER_BLOCKED}


def _photo_jpeg() -> bytes:
    """A seeded 640x480 picture (gradients and noise), JPEG quality 90."""
    import io

    from PIL import Image

    generator = torch.Generator().manual_seed(2)
    noise = torch.rand((480, 640, 3), generator=generator).numpy()
    ramp = torch.linspace(0, 1, 640).numpy()[None, :, None]
    pixels = (255 * (0.5 * noise + 0.5 * ramp)).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _print_images(results: dict) -> None:
    images = results["images"]
    row = images["ours"]
    print(f"\nimages, ResNet-18, {images['jpeg_bytes']:,}-byte 640x480 JPEG bodies, batch 8, 1 worker, c=8")
    print(f"  decode + preprocess (resize 256, crop 224, normalize): "
          f"{images['decode_preprocess_ms_per_image']:.2f} ms per image")
    print(f"  ours                   {row['requests_per_s']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
          f"p99 {row['p99_ms']:7.1f} ms  failed {row['failed']}")
    print(f"  stock image_classifier not measured: {images['stock image_classifier']}")


_WRK_SCRIPT = """
wrk.method = "POST"
local file = io.open(os.getenv("MAR_BENCH_BODY"), "rb")
wrk.body = file:read("*all")
file:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MAR_WRK %d %d %d %.1f %.1f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_run(config: ServerConfig, path: str, *, body: Path, level: int, seconds: float,
            content_type: str = "application/json", headers: dict[str, str] | None = None) -> dict:
    """wrk (keep-alive, one thread per core) POSTing one body file; the same figures as ab_run."""
    script = body.with_suffix(".lua")
    script.write_text(_WRK_SCRIPT)
    extra = {"Content-Type": content_type, "Authorization": f"Bearer {config.key('inference')}",
             **(headers or {})}
    command = ["wrk", "-t", str(min(level, os.cpu_count() or 1)), "-c", str(level),
               "-d", f"{max(1, round(seconds))}s", "--timeout", "120s", "-s", str(script),
               *[arg for key, value in extra.items() for arg in ("-H", f"{key}: {value}")],
               config.inference_url + path]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120,
                            env={**os.environ, "MAR_BENCH_BODY": str(body)}).stdout
    _drain(config, path, body.read_bytes(), extra)
    found = re.search(r"MAR_WRK (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", output)
    if found is None:
        raise BenchError(f"bench: wrk produced no result:\n{output[-2000:]}")
    requests, micros, failed, p50_us, p99_us = found.groups()
    return {"requests_per_s": int(requests) / (int(micros) / 1e6), "p50_ms": float(p50_us) / 1000,
            "p99_ms": float(p99_us) / 1000, "completed": int(requests), "failed": int(failed)}


def _drain(config: ServerConfig, path: str, body: bytes, headers: dict[str, str]) -> None:
    """Wait until TorchServe has worked off what the load left queued: it keeps the jobs of
    connections wrk closed, and the next run would meet them (503s at job_queue_size). Its queue
    is first in, first out, so once one more request is answered, the backlog is gone."""
    extra = {k: v for k, v in headers.items() if k not in ("Content-Type", "Authorization")}
    TorchServeClient(config).post(path, body, content_type=headers["Content-Type"], headers=extra)


def ab_run(config: ServerConfig, name: str, body: Path, level: int, seconds: float) -> dict:
    """ApacheBench, as TorchServe's own benchmark drives it (-k keep-alive, POST JSON)."""
    # -l: response lengths vary (floats), which ab would otherwise count as failures
    command = ["ab", "-k", "-q", "-l", "-c", str(level), "-t", str(seconds), "-n", "10000000",
               "-p", str(body), "-T", "application/json",
               "-H", f"Authorization: Bearer {config.key('inference')}",
               f"{config.inference_url}/predictions/{name}"]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120).stdout
    failed = int(_ab_field(output, r"Failed requests:\s+(\d+)") or 0)
    non_2xx = int(_ab_field(output, r"Non-2xx responses:\s+(\d+)") or 0)
    return {"requests_per_s": float(_ab_field(output, r"Requests per second:\s+([\d.]+)")),
            "p50_ms": float(_ab_field(output, r"\n\s+50%\s+(\d+)")),
            "p99_ms": float(_ab_field(output, r"\n\s+99%\s+(\d+)")),
            "completed": int(_ab_field(output, r"Complete requests:\s+(\d+)")),
            "failed": failed + non_2xx}


def _ab_field(output: str, pattern: str) -> str | None:
    match = re.search(pattern, output)
    if match is None and "Requests per second" not in output:
        raise BenchError(f"bench: ab produced no result:\n{output[-2000:]}")
    return match.group(1) if match else None


# ---- output ----

def _machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def _print_build(results: dict) -> None:
    build = results["build"]
    ours = build["mar build"]["median_s"]
    print(f"\nbuild, {results['weights_bytes'] / 2**30:.2f} GiB fp32 weights "
          f"(median of {results['repeats']})")
    for name, timing in build.items():
        print(f"  {name:<36} {timing['median_s']:7.2f} s   {timing['median_s'] / ours:6.1f}x ours")


def _print_cold_start(results: dict) -> None:
    cold = results["cold_start"]
    ours = cold["ours (.mar)"]["median_s"]
    floor = cold["TorchServe floor (no-op, zip-store)"]["median_s"]
    print("\ncold start: register call -> first successful prediction")
    for name, timing in cold.items():
        memory = timing["memory_growth_over_weights"]
        print(f"  {name:<38} {timing['median_s']:7.2f} s   {timing['median_s'] / ours:5.2f}x ours"
              f"   {timing['median_s'] / floor:5.2f}x floor"
              + (f"   memory +{memory:.2f}x weights" if memory is not None else ""))


def _print_throughput(results: dict) -> None:
    serving = results["throughput_serving"]
    _print_comparison(f"throughput, demo digits CNN, batch {serving['batch_size']}, delay "
                      f"{serving['max_batch_delay_ms']} ms, 1 worker (ab -k)",
                      results["throughput"], "no-op ceiling", "ceiling")


def _print_protocols(results: dict) -> None:
    serving = results.get("throughput_serving") or _demo_serving()
    _print_comparison(f"protocols, {PROTOCOL_WIDTH} floats in and out per request, Open Inference "
                      f"Protocol, batch {serving['batch_size']}, delay "
                      f"{serving['max_batch_delay_ms']} ms, 1 worker (wrk)",
                      results["protocols"], "JSON tensors", "JSON")


def _print_comparison(title: str, table: dict, reference: str, unit: str) -> None:
    """Rows of variants per concurrency, each as a ratio to the `reference` variant's rate."""
    print(f"\n{title}")
    for level, variants in table.items():
        base = variants[reference]["requests_per_s"]
        for name, row in variants.items():
            print(f"  c={level:<4} {name:<18} {row['requests_per_s']:8.0f} req/s  "
                  f"p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                  f"{row['requests_per_s'] / base:5.2f}x {unit}  failed {row['failed']}")
