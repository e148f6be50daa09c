"""The GPU check behind scripts/gpu_check.sh: one table from a private TorchServe with one GPU.

For the demo digits CNN and a ~1 GiB MLP, each at fp32 and fp16: cold start (register call to first
prediction), requests/s and p50/p99 at concurrency 64 (ab) with `--workers` workers on the one GPU,
GPU memory per worker and the golden check's max abs error (both from the worker's log), and the
device the worker chose.
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

from scripts.bench import ab_run, cold_start, make_bench_model
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import DEMO_SPEC, REPO_ROOT, private_env, read_config, write_private_config
from scripts.digits import load_split, save_state_dict, train
from scripts.server import start_server, stop_server

BATCH_SIZE = 16  # for both models, as the demo spec serves the digits CNN

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=15, help="ab run per model")
    parser.add_argument("--workers", type=int, default=1, help="workers per model under load")
    parser.add_argument("--models", nargs="+", choices=("digits", "mlp1g"),
                        default=["digits", "mlp1g"])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_results" / "gpu_check.json")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy the private server's ts_log.log and model_log.log here")
    args = parser.parse_args(argv)
    if shutil.which("ab") is None:
        print("gpu_check: needs ApacheBench: apt-get install apache2-utils", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="mar-gpu-check-") as scratch:
        try:
            rows = _run(Path(scratch), args)
        finally:
            if args.keep_logs:
                _copy_logs(Path(scratch) / "logs", args.keep_logs)
    _print(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cuda": _gpu_name(),
                                    "rows": rows}, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


def _run(root: Path, args: argparse.Namespace) -> list[dict]:
    env = private_env(root)
    config_path = write_private_config(root)
    with config_path.open("a") as config_file:
        config_file.write("number_of_gpu=1\n")
    config = read_config(config_path)
    specs = _specs(root, args.size_mb, args.models)
    for spec in specs.values():
        build_archive(spec["path"], export_path=config.model_store)
    start_server(config, env=env, restore=False)
    rows = []
    try:
        for name, spec in specs.items():
            rows.append(_measure(config, root, name, spec, args.seconds, args.workers))
    finally:
        stop_server(config, env=env)
    return rows


def _specs(root: Path, size_mb: int, models: list[str]) -> dict[str, dict]:
    base = {}
    if "digits" in models:
        digits = yaml.safe_load(DEMO_SPEC.read_text())
        save_state_dict(train(load_split(), digits["params"]), root / "digits.pt")
        base["digits"] = ({**digits, "weights": str(root / "digits.pt")}, [[[0.5] * 8] * 8])
    if "mlp1g" in models:
        big = make_bench_model(root, size_mb)
        base["mlp1g"] = (yaml.safe_load(big["spec"].read_text()) | {"weights": str(big["weights"])},
                         [0.5] * big["width"])
    specs = {}
    for label, (data, sample) in base.items():
        for precision in ("fp32", "fp16"):
            name = f"{label}_{precision}"
            serving = {**data.get("serving", {}), "precision": precision, "device": "auto",
                       "batch_size": BATCH_SIZE, "max_batch_delay_ms": 5, "response_timeout_s": 600}
            path = root / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**data, "name": name, "serving": serving}))
            specs[name] = {"path": path, "sample": sample}
    return specs


def _measure(config, root: Path, name: str, spec: dict, seconds: float, workers: int) -> dict:
    body = root / f"{name}.json"
    body.write_text(json.dumps({"inputs": spec["sample"]}))
    started = cold_start(config, name, f"{name}-1.0.mar", body.read_bytes(), keep=True)
    report = started["report"]
    client = TorchServeClient(config)
    if workers > 1:
        client.scale(name, None, min_workers=workers, max_workers=workers)
    ab_run(config, name, body, 64, min(seconds, 3))  # warm-up
    load = ab_run(config, name, body, 64, seconds)
    client.unregister(name)
    return {"model": name, "workers": workers, "device": report.device if report else "?",
            "cold_start_s": started["seconds"], "requests_per_s": load["requests_per_s"],
            "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"], "failed": load["failed"],
            "gpu_mib_per_worker": (report.gpu_allocated_bytes or 0) / 2**20 if report else 0,
            "golden_max_abs_error": report.golden_max_error if report else float("nan")}


def _copy_logs(logs: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("ts_log.log", "model_log.log"):
        if (logs / name).exists():
            shutil.copy(logs / name, destination / name)


def _gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"


def _print(rows: list[dict]) -> None:
    print(f"\nGPU check, {time.strftime('%Y-%m-%d')}, {_gpu_name()}, torch {torch.__version__}, "
          f"batch {BATCH_SIZE}, delay 5 ms")
    print(f"{'model':<12} {'device':<8} {'workers':>7} {'cold start':>10} {'req/s c=64':>11} "
          f"{'p50':>6} {'p99':>6} {'GPU MiB':>8} {'golden err':>11} {'failed':>6}")
    for r in rows:
        print(f"{r['model']:<12} {r['device']:<8} {r['workers']:>7} {r['cold_start_s']:>9.2f}s "
              f"{r['requests_per_s']:>11.0f} {r['p50_ms']:>5.0f}ms {r['p99_ms']:>5.0f}ms "
              f"{r['gpu_mib_per_worker']:>8.0f} {r['golden_max_abs_error']:>11.2g} {r['failed']:>6}")


if __name__ == "__main__":
    sys.exit(main())
