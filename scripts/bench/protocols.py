"""protocols: the same Open Inference Protocol request as JSON tensors and as binary tensors, into a
cheap 8,192 -> 8,192 float model, so the protocol, not the model, is what costs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from handlers.errors import BenchError
from scripts.bench.archives import demo_serving
from scripts.bench.drivers import median_run, wrk_run
from scripts.bench.harness import BenchRun
from scripts.bench.report import print_comparison
from scripts.build import build_archive
from scripts.client import TorchServeClient, oip_request
from scripts.config import ServerConfig

__all__ = ['measure', 'report', 'PROTOCOL_WIDTH']


def measure(run: BenchRun) -> dict:
    return _bench_protocols(run.config, run.root, run.seconds, run.concurrency, run.repeats)


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
    serving = demo_serving()
    spec = {"name": "oip_bench", "version": "1.0", "arch": "mlp", "params": params,
            "weights": "weights.pt", "inputs": [{"name": "x", "shape": [PROTOCOL_WIDTH]}],
            "outputs": ["y"], "serving": {**serving, "response_timeout_s": 600}}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    archive = build_archive(folder / "spec.yaml", export_path=config.model_store).archive
    values = torch.rand(1, PROTOCOL_WIDTH, generator=torch.Generator().manual_seed(1)).numpy()
    as_json, _ = oip_request({"x": values}, binary=False)
    as_binary, headers = oip_request({"x": values}, binary=True, binary_output=True)
    (folder / "json.json").write_bytes(as_json)
    (folder / "binary.bin").write_bytes(as_binary)
    variants = {
        "JSON tensors": dict(body=folder / "json.json"),
        "binary tensors": dict(body=folder / "binary.bin", content_type=headers.pop("Content-Type"),
                               headers=headers),
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
    return {level: {label: median_run(rows) for label, rows in variants_.items()}
            for level, variants_ in runs.items()}


def report(results: dict) -> None:
    serving = demo_serving()
    print_comparison(f"protocols, {PROTOCOL_WIDTH} floats in and out per request, Open Inference "
                      f"Protocol, batch {serving['batch_size']}, delay "
                      f"{serving['max_batch_delay_ms']} ms, 1 worker (wrk)",
                      results["protocols"], "JSON tensors", "JSON")
