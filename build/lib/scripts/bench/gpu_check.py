"""The GPU check behind scripts/bench/gpu_check.sh: one table from a private TorchServe with one GPU.

For each model (the demo digits CNN, ResNet-18, a ~1 GiB MLP), precision and runtime: build time,
cold start (register call to first answer), requests/s and p50/p99 under wrk with binary v2
requests (`--workers` workers on the one GPU, the spec's batching), GPU memory per worker and the
golden check's max abs error (both from the worker's report line), and the device it served on. A
runtime the build refuses is listed with the reason.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from handlers.errors import MarError
from handlers.runtimes import RUNTIMES
from scripts.bench import make_bench_model, wrk_run
from scripts.bench.cold_start import cold_start
from scripts.bench.runtimes import binary_request
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import DEMO_SPEC, REPO_ROOT, private_env, read_config, write_private_config
from scripts.server import start_server, stop_server

BATCH_SIZE = 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="the MLP's weights")
    parser.add_argument("--seconds", type=float, default=10, help="wrk run per row")
    parser.add_argument("--workers", type=int, default=1, help="workers per model under load")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--models", nargs="+", choices=("digits", "resnet18", "mlp1g"),
                        default=["digits", "resnet18", "mlp1g"])
    parser.add_argument("--runtimes", nargs="+", choices=tuple(RUNTIMES),
                        default=["eager"])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "fp16"), default=["fp32", "fp16"])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_results" / "gpu_check.json")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy the private server's ts_log.log and model_log.log here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("gpu_check: needs wrk: apt-get install wrk", file=sys.stderr)
        return 1
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mar-gpu-check-") as scratch:
        try:
            _run(Path(scratch), args, rows)
        finally:
            if args.keep_logs:
                _copy_logs(Path(scratch) / "logs", args.keep_logs)
            _print(rows, args)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cuda": _gpu_name(),
                                            "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


def _run(root: Path, args: argparse.Namespace, rows: list[dict]) -> None:
    env = private_env(root)
    config_path = write_private_config(root)
    with config_path.open("a") as config_file:
        config_file.write("number_of_gpu=1\n")
    config = read_config(config_path)
    start_server(config, env=env, restore=False)
    try:
        for label, (data, shape) in _models(root, args).items():
            for precision in args.precisions:
                for runtime in args.runtimes:
                    rows.append(_row(config, root, label, data, shape, precision, runtime, args))
                    _print(rows[-1:], args, header=len(rows) == 1)
    finally:
        stop_server(config, env=env)


def _models(root: Path, args: argparse.Namespace) -> dict[str, tuple[dict, list[int]]]:
    from model_defs import create_model

    models = {}
    for label in args.models:
        if label == "mlp1g":
            big = make_bench_model(root, args.size_mb)
            data = yaml.safe_load(big["spec"].read_text()) | {"weights": str(big["weights"])}
            models[label] = (data, [big["width"]])
            continue
        path = DEMO_SPEC if label == "digits" else REPO_ROOT / "model_defs" / "specs" / f"{label}.yaml"
        data = yaml.safe_load(path.read_text())
        data.pop("labels", None)
        torch.manual_seed(0)
        weights = root / f"{label}.pt"
        torch.save(create_model(data["arch"], **data.get("params", {})).state_dict(), weights)
        models[label] = (data | {"weights": str(weights)}, data["input"]["shape"])
    return models


def _row(config, root: Path, label: str, data: dict, shape: list[int], precision: str,
         runtime: str, args: argparse.Namespace) -> dict:
    name = f"{label}_{precision}_{runtime}"
    row = {"model": label, "precision": precision, "runtime": runtime, "workers": args.workers}
    serving = {**data.get("serving", {}), "precision": precision, "device": "auto",
               "runtime": runtime, "batch_size": BATCH_SIZE, "max_batch_delay_ms": 5,
               "response_timeout_s": 600}
    spec = root / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({**data, "name": name, "serving": serving}))
    started = time.perf_counter()
    try:
        build_archive(spec, export_path=config.model_store)
    except MarError as err:
        return {**row, "refused": " ".join(str(err).split())[:300]}
    row["build_s"] = time.perf_counter() - started
    folder = root / name
    folder.mkdir()
    body, header = binary_request(folder, shape)
    try:
        started = cold_start(config, name, f"{name}-1.0.mar", body.read_bytes(), keep=True,
                             v2_json_length=header)
    except MarError as err:
        return {**row, "refused": f"worker: {err}"}
    row["cold_start_s"], report = started["seconds"], started["report"]
    client = TorchServeClient(config)
    if args.workers > 1:
        client.scale(name, None, min_workers=args.workers, max_workers=args.workers)
    path, headers = f"/v2/models/{name}/infer", {"Inference-Header-Content-Length": str(header)}
    wrk_run(config, path, body=body, level=args.concurrency, seconds=min(args.seconds, 3),
            content_type="application/octet-stream", headers=headers)
    load = wrk_run(config, path, body=body, level=args.concurrency, seconds=args.seconds,
                   content_type="application/octet-stream", headers=headers)
    client.unregister(name)
    return {**row, "device": report.device if report else "?", **load,
            "gpu_mib_per_worker": (report.gpu_allocated_bytes or 0) / 2**20 if report else 0,
            "golden_max_abs_error": report.golden_max_error if report else float("nan")}


def _copy_logs(logs: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("ts_log.log", "model_log.log"):
        if (logs / name).exists():
            shutil.copy(logs / name, destination / name)


def _gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"


def _print(rows: list[dict], args: argparse.Namespace, *, header: bool = True) -> None:
    if header:
        print(f"\nGPU check, {time.strftime('%Y-%m-%d')}, {_gpu_name()}, torch {torch.__version__}, "
              f"batch {BATCH_SIZE}, delay 5 ms, c={args.concurrency}, binary v2 requests")
        print(f"{'model':<9} {'prec':<5} {'runtime':<12} {'device':<7} {'wk':>2} {'build':>6} "
              f"{'cold':>6} {'req/s':>8} {'p50':>7} {'p99':>7} {'GPU MiB':>8} {'golden':>8} {'failed':>6}")
    for r in rows:
        if "refused" in r:
            print(f"{r['model']:<9} {r['precision']:<5} {r['runtime']:<12} refused: {r['refused'][:160]}")
            continue
        print(f"{r['model']:<9} {r['precision']:<5} {r['runtime']:<12} {r['device']:<7} "
              f"{r['workers']:>2} {r['build_s']:>5.1f}s {r['cold_start_s']:>5.1f}s "
              f"{r['requests_per_s']:>8.0f} {r['p50_ms']:>6.1f}ms {r['p99_ms']:>6.1f}ms "
              f"{r['gpu_mib_per_worker']:>8.0f} {r['golden_max_abs_error']:>8.2g} {r['failed']:>6}",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
