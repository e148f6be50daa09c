"""throughput: the demo digits CNN under ab at each concurrency: our handler vs a stock BaseHandler
archive vs a no-op handler with the same batching (TorchServe's ceiling on this machine).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from handlers.errors import BenchError
from handlers.spec import load_spec
from scripts.bench.archives import ASSETS, demo_serving, demo_spec, stock_archive
from scripts.bench.drivers import ab_run, median_run
from scripts.bench.harness import BenchRun
from scripts.bench.report import print_comparison
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import REPO_ROOT, ServerConfig

__all__ = ['measure', 'report']


def measure(run: BenchRun) -> dict:
    return _bench_throughput(run.config, run.root, run.seconds, run.concurrency, run.repeats)


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
    return {level: {label: median_run(rows) for label, rows in variants.items()}
            for level, variants in runs.items()}


def _throughput_archives(config: ServerConfig, root: Path) -> dict[str, tuple[str, str]]:
    """The demo digits CNN three ways, all with the demo spec's batching: label -> (model name,
    archive in the store)."""
    from model_defs import create_model

    folder = root / "throughput"
    folder.mkdir()
    spec = demo_spec()
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
        stock_archive(stock, config.model_store, "zip-store", name=name, handler=ASSETS / handler,
                       model_file=model_file, config_file=folder / "model-config.yaml")
    return {"ours": ("tp_ours", ours.name), "stock BaseHandler": ("tp_stock", "tp_stock.mar"),
            "no-op ceiling": ("tp_noop", "tp_noop.mar")}


def report(results: dict) -> None:
    serving = demo_serving()
    print_comparison(f"throughput, demo digits CNN, batch {serving['batch_size']}, delay "
                      f"{serving['max_batch_delay_ms']} ms, 1 worker (ab -k)",
                      results["throughput"], "no-op ceiling", "ceiling")
