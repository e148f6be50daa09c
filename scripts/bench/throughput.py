"""throughput: the demo digits CNN, one worker, the demo spec's batching, each variant against
TorchServe's ceiling on this machine (a no-op handler with the same batching):

    JSON under ab (as TorchServe's own benchmark drives it)
        ours | stock BaseHandler | forward only (the model alone, no request handling) | no-op
    binary v2 under wrk (ab misreads binary bodies)
        ours | a no-op handler answering binary v2
    where a batch's time goes: py-spy on our worker under load, JSON and binary (profile.py)

ours / forward only is the handler's own overhead; forward only / no-op is the model's cost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from handlers.errors import BenchError
from handlers.spec import load_spec
from scripts.bench.archives import ASSETS, demo_serving, demo_spec, stock_archive
from scripts.bench.drivers import ab_run, median_run, wrk_run
from scripts.bench.harness import BenchRun
from scripts.bench.profile import print_profile, profile_worker
from scripts.bench.report import print_comparison
from scripts.build import build_archive
from scripts.client import TorchServeClient, oip_request
from scripts.config import REPO_ROOT, ServerConfig

__all__ = ['measure', 'report']

JSON_CEILING, BINARY_CEILING = "no-op ceiling", "no-op binary v2"


def measure(run: BenchRun) -> dict:
    if shutil.which("ab") is None or shutil.which("wrk") is None:
        raise BenchError("the throughput benchmark drives the server with ApacheBench (`ab`) and "
                         "wrk: `sudo apt-get install apache2-utils wrk`, or pass "
                         "--throughput-seconds 0 to skip it.")
    folder = run.root / "throughput"
    folder.mkdir()
    archives = _throughput_archives(run.config, folder)
    client = TorchServeClient(run.config)
    for name, archive in archives.values():
        client.register(archive, initial_workers=1)
    try:
        loads = _loads(run.config, folder, {label: name for label, (name, _) in archives.items()})
        results = _rounds(loads, run.seconds, run.concurrency, run.repeats)
        results["profile"] = {kind: profile_worker(
            run.config, "tp_ours", lambda seconds, kind=kind: loads[kind]["ours"](16, seconds),
            loads["probe"], seconds=run.seconds, folder=folder) for kind in ("json", "binary")}
    finally:
        for name, _ in archives.values():
            client.unregister(name)
    return results


def _loads(config: ServerConfig, folder: Path, names: dict[str, str]) -> dict:
    """Per request form, per variant: a load run at (concurrency, seconds)."""
    body = folder / "digit.json"
    body.write_text(json.dumps({"inputs": [[[0.5] * 8] * 8]}))
    binary, headers = oip_request({"input": np.full((1, 1, 8, 8), 0.5, np.float32)}, binary=True)
    (folder / "digit.bin").write_bytes(binary)
    length = {"Inference-Header-Content-Length": headers["Inference-Header-Content-Length"]}

    def ab(name):
        return lambda level, seconds: ab_run(config, name, body, level, seconds)

    def wrk(name):
        return lambda level, seconds: wrk_run(
            config, f"/v2/models/{name}/infer", body=folder / "digit.bin", level=level,
            seconds=seconds, content_type="application/octet-stream", headers=length)

    client = TorchServeClient(config)
    return {"json": {label: ab(name) for label, name in names.items()
                     if label != BINARY_CEILING},
            "binary": {"ours": wrk(names["ours"]), BINARY_CEILING: wrk(names[BINARY_CEILING])},
            "probe": lambda: client.post(f"/predictions/{names['ours']}", body.read_bytes(),
                                         content_type="application/json")}


def _rounds(loads: dict, seconds: float, concurrency: list[int], rounds: int) -> dict:
    """Each variant interleaved round by round (load on a 2-core machine drifts by +-20% over
    minutes, so variants are compared inside each round); the median per variant."""
    runs = {kind: {str(level): {label: [] for label in loads[kind]} for level in concurrency}
            for kind in ("json", "binary")}
    for kind in runs:
        for load in loads[kind].values():
            load(max(concurrency), min(seconds, 3))  # warm-up
    for _ in range(rounds):
        for kind, levels in runs.items():
            for level, variants in levels.items():
                for label, rows in variants.items():
                    rows.append(loads[kind][label](int(level), seconds))
    return {kind: {level: {label: median_run(rows) for label, rows in variants.items()}
                   for level, variants in levels.items()} for kind, levels in runs.items()}


def _throughput_archives(config: ServerConfig, folder: Path) -> dict[str, tuple[str, str]]:
    """The demo digits CNN each way, all with the demo spec's batching: label -> (model name,
    archive in the store)."""
    from model_defs import create_model

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
    variants = {"stock BaseHandler": ("tp_stock", "stock_handler.py", True),
                "forward only": ("tp_forward", "forward_only_handler.py", True),
                JSON_CEILING: ("tp_noop", "noop_handler.py", False),
                BINARY_CEILING: ("tp_noop_binary", "noop_binary_handler.py", False)}
    for name, handler, model_file in variants.values():
        stock_archive(stock, config.model_store, "zip-store", name=name, handler=ASSETS / handler,
                       model_file=model_file, config_file=folder / "model-config.yaml")
    return {"ours": ("tp_ours", ours.name),
            **{label: (name, f"{name}.mar") for label, (name, _, _) in variants.items()}}


def report(results: dict) -> None:
    figures, serving = results["throughput"], demo_serving()
    setting = (f"demo digits CNN, batch {serving['batch_size']}, delay "
               f"{serving['max_batch_delay_ms']} ms, 1 worker")
    print_comparison(f"throughput, JSON (ab -k), {setting}", figures["json"], JSON_CEILING,
                     "ceiling")
    print_comparison(f"throughput, binary v2 (wrk), {setting}", figures["binary"], BINARY_CEILING,
                     "ceiling")
    for kind, profile in figures["profile"].items():
        print_profile(f"where a batch's time goes in our worker, {kind} at c=16", profile)
