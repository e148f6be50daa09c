"""`mar bench --precisions`: each model at the precisions and runtimes that serve it, through one
TorchServe with binary v2 requests under wrk (one worker, the spec's batching, one torch thread):
requests/s, p50/p99, cold start, archive size, build time, and the build's accuracy gate against
fp32 eager; for the trained digits CNN, its accuracy on the 360 held-back images through the
server at every precision.

    resnet18    ResNet-18, batch 8, seeded weights (no trained ImageNet weights offline), gated on
                64 pictures (shapes and noise, preprocessed as ImageNet's)
    sentiment   the text transformer, texts of mixed lengths in turn, gated on 64 texts
    digits      the demo CNN trained on its 1,437 training digits, calibrated on 64 of them,
                gated and measured on the 360 held back
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from handlers.errors import BenchError, MarError
from scripts.bench.cold_start import cold_start
from scripts.bench.drivers import median_run, wrk_run
from scripts.bench.report import machine
from scripts.build import build_archive
from scripts.client import TorchServeClient, oip_outputs, oip_request
from scripts.config import REPO_ROOT, private_env, read_config, write_private_config
from scripts.server import start_server, stop_server

__all__ = ["run_precisions_bench", "CONFIGURATIONS"]

SPECS = REPO_ROOT / "model_defs" / "specs"
# (label, serving.runtime, serving.precision) per model; int8 static is calibrated on samples
CONFIGURATIONS = {
    "resnet18": [("fp32 eager", "eager", "fp32"), ("bf16 eager", "eager", "bf16"),
                 ("bf16 aoti", "aoti", "bf16"), ("int8 static aoti", "aoti", "int8"),
                 ("int8 static onnx", "onnx", "int8")],
    "sentiment": [("fp32 eager", "eager", "fp32"), ("bf16 eager", "eager", "bf16"),
                  ("bf16 aoti", "aoti", "bf16"), ("int8 dynamic eager", "eager", "int8")],
    "digits": [("fp32 eager", "eager", "fp32"), ("bf16 eager", "eager", "bf16"),
               ("int8 static aoti", "aoti", "int8"), ("int8 static onnx", "onnx", "int8"),
               ("int8 dynamic eager", "eager", "int8")],
}


@dataclass
class Workload:
    spec: dict  # the spec, weights and samples beside it in `folder`
    folder: Path
    bodies: list[Path]  # binary v2 requests, sent in turn
    header: list[int]  # their JSON headers' lengths (the same for bodies of one shape)


def run_precisions_bench(*, models: tuple[str, ...], seconds: float, concurrency: int,
                         repeats: int, out: Path) -> dict:
    if shutil.which("wrk") is None:
        raise BenchError("`mar bench --precisions` drives the server with wrk: "
                         "`sudo apt-get install wrk`.")
    results: dict = {"machine": machine(), "seconds": seconds, "concurrency": concurrency,
                     "repeats": repeats, "models": {}}
    with tempfile.TemporaryDirectory(prefix="mar-bench-precisions-") as scratch:
        root = Path(scratch)
        env = private_env(root)
        config = read_config(write_private_config(root))
        config.model_store.mkdir(parents=True, exist_ok=True)
        start_server(config, env=env, restore=False)
        try:
            for model in models:
                workload = _WORKLOADS[model](root / model)
                rows = _bench_model(config, model, workload, seconds, concurrency, repeats)
                results["models"][model] = rows
                _print(model, rows, concurrency)
        finally:
            stop_server(config, env=env)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {out}")
    return results


def _bench_model(config, model: str, workload: Workload, seconds: float, concurrency: int,
                 repeats: int) -> dict:
    rows: dict[str, dict] = {}
    for label, runtime, precision in CONFIGURATIONS[model]:
        name = f"{model}_{label.replace(' ', '_')}"
        rows[label] = _build(config, workload, name, runtime, precision)
    client = TorchServeClient(config)
    for _ in range(repeats):  # interleaved: every configuration once per round
        for label, row in rows.items():
            if "refused" in row:
                continue
            name = row["name"]
            row["cold_s"].append(cold_start(config, name, f"{name}-1.0.mar",
                                            workload.bodies[0].read_bytes(), keep=True,
                                            v2_json_length=workload.header[0])["seconds"])
            path, headers = f"/v2/models/{name}/infer", {
                "Inference-Header-Content-Length": str(workload.header[0])}
            wrk_run(config, path, body=workload.bodies, level=concurrency, seconds=min(seconds, 3),
                    content_type="application/octet-stream", headers=headers)  # warm-up
            row["runs"].append(wrk_run(config, path, body=workload.bodies, level=concurrency,
                                       seconds=seconds, content_type="application/octet-stream",
                                       headers=headers))
            if model == "digits" and "served_accuracy" not in row:
                row["served_accuracy"] = _served_accuracy(client, name, workload.folder)
            client.unregister(name)
    for row in rows.values():
        if "refused" not in row:
            row.update(median_run(row.pop("runs")), cold_start_s=statistics.median(row["cold_s"]))
    return rows


def _build(config, workload: Workload, name: str, runtime: str, precision: str) -> dict:
    settings = {"dtype": precision, "evaluation": {"files": "evaluation"}}
    if precision == "int8" and runtime != "eager":
        settings["calibration"] = {"files": "calibration"}
    spec = {**workload.spec, "name": name, "serving": {**workload.spec["serving"], "runtime": runtime,
                                                      "precision": settings}}
    path = workload.folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    try:
        result = build_archive(path, export_path=config.model_store)
    except MarError as err:
        return {"refused": str(err).split(": ", 1)[-1][:300]}
    gate = result.gate.figures if result.gate else {}
    return {"name": name, "build_s": time.perf_counter() - started, "gate": gate,
            "archive_mb": result.archive.stat().st_size / 1e6, "cold_s": [], "runs": []}


def _served_accuracy(client: TorchServeClient, name: str, folder: Path) -> float:
    """The held-back digits through the server, 8 per binary v2 request."""
    images, labels = np.load(folder / "test_images.npy"), np.load(folder / "test_labels.npy")
    correct = 0
    for start in range(0, len(images), 8):
        body, headers = oip_request({"input": images[start:start + 8]}, binary=True)
        answer = client.infer_v2(name, body, json_length=int(headers["Inference-Header-Content-Length"]))
        correct += int((oip_outputs(answer)["output"].argmax(1) == labels[start:start + 8]).sum())
    return correct / len(images)


def _binary(folder: Path, index: int, tensors: dict) -> tuple[Path, int]:
    body, headers = oip_request(tensors, binary=True, binary_output=True)
    path = folder / f"request-{index}.bin"
    path.write_bytes(body)
    return path, int(headers["Inference-Header-Content-Length"])


def _prepared(folder: Path, spec_name: str, params_override: dict | None = None) -> dict:
    folder.mkdir(parents=True)
    (folder / "calibration").mkdir()
    (folder / "evaluation").mkdir()
    data = yaml.safe_load((SPECS / f"{spec_name}.yaml").read_text())
    data.update(params_override or {})
    return {**data, "weights": "weights.pt"}


def _resnet18(folder: Path) -> Workload:
    from PIL import Image

    from model_defs import create_model
    from scripts.bench.detection import picture_jpeg

    spec = _prepared(folder, "resnet18")
    spec.update(labels=[f"class {i}" for i in range(1000)], top_k=5)  # the gate's top-1 and top-5
    torch.manual_seed(0)
    torch.save(create_model(spec["arch"], **spec["params"]).state_dict(), folder / "weights.pt")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for index in range(64 + 32):
        picture = picture_jpeg(folder / "picture.jpg", 224, 224, seed=index)
        pixels = (np.asarray(Image.open(picture), np.float32) / 255 - mean) / std
        target = "calibration" if index < 32 else "evaluation"
        np.save(folder / target / f"{index:03d}.npy", pixels.transpose(2, 0, 1).astype(np.float32))
    sample = np.load(folder / "evaluation" / "032.npy")[None]
    body, header = _binary(folder, 0, {"input": sample})
    return Workload(spec, folder, [body], [header])


def _sentiment(folder: Path) -> Workload:
    from model_defs import create_model
    from tokenizers import Tokenizer

    spec = _prepared(folder, "sentiment")
    shutil.copyfile(SPECS / spec["tokenizer"]["file"], folder / spec["tokenizer"]["file"])
    torch.manual_seed(0)
    torch.save(create_model(spec["arch"], **spec["params"]).state_dict(), folder / "weights.pt")
    words = "the movie was good bad fun great ok not at all i really liked plot and acting story " \
            "film boring terrible".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 40)))) for _ in range(64)]
    for index, text in enumerate(texts):
        (folder / "evaluation" / f"{index:03d}.txt").write_text(text)
    tokenizer = Tokenizer.from_file(str(folder / spec["tokenizer"]["file"]))
    requests = []
    for text in texts[:8]:  # mixed lengths, in turn
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        requests.append(oip_request({"input_ids": ids, "attention_mask": np.ones_like(ids)},
                                    binary=True, binary_output=True))
    # wrk sends one Inference-Header-Content-Length: every JSON header padded to the longest
    # (JSON allows trailing spaces)
    longest = max(int(headers["Inference-Header-Content-Length"]) for _, headers in requests)
    bodies = []
    for index, (body, headers) in enumerate(requests):
        length = int(headers["Inference-Header-Content-Length"])
        path = folder / f"request-{index}.bin"
        path.write_bytes(body[:length] + b" " * (longest - length) + body[length:])
        bodies.append(path)
    return Workload(spec, folder, bodies, [longest] * len(bodies))


def _digits(folder: Path) -> Workload:
    from scripts.examples.digits import load_split, train

    spec = _prepared(folder, "digits_cnn")
    split = load_split()
    torch.save(train(split, spec["params"]).state_dict(), folder / "weights.pt")
    for index in range(64):
        np.save(folder / "calibration" / f"{index:03d}.npy", split.train_images[index])
    for index, image in enumerate(split.test_images):
        np.save(folder / "evaluation" / f"{index:03d}.npy", image)
    np.save(folder / "test_images.npy", split.test_images)
    np.save(folder / "test_labels.npy", split.test_labels)
    body, header = _binary(folder, 0, {"input": split.test_images[:1]})
    return Workload(spec, folder, [body], [header])


_WORKLOADS = {"resnet18": _resnet18, "sentiment": _sentiment, "digits": _digits}


def _print(model: str, rows: dict, concurrency: int) -> None:
    base = rows.get("fp32 eager", {})
    print(f"\nprecisions, {model}, c={concurrency}, binary v2 requests, 1 worker, 1 thread")
    print(f"  {'configuration':<20} {'req/s':>8} {'x fp32':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'cold s':>7} {'MB':>6} {'build s':>8}  agreement with fp32 (gate)")
    for label, row in rows.items():
        if "refused" in row:
            print(f"  {label:<20} refused at build: {row['refused'][:150]}")
            continue
        rate = row["requests_per_s"] / base["requests_per_s"] if "requests_per_s" in base else 0
        gate = ", ".join(f"{k} {v:.4g}" for k, v in row["gate"].items()) or "fp32 (the reference)"
        served = f"; accuracy through the server {row['served_accuracy']:.2%}" \
            if "served_accuracy" in row else ""
        print(f"  {label:<20} {row['requests_per_s']:8.1f} {rate:7.2f} {row['p50_ms']:8.1f} "
              f"{row['p99_ms']:8.1f} {row['cold_start_s']:7.2f} {row['archive_mb']:6.1f} "
              f"{row['build_s']:8.1f}  {gate}{served}")
