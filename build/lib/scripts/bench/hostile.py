"""hostile: what hostile traffic costs the valid requests beside it.

- mix: the image model the 40000x40000-pixel PNG report used (digits CNN, image input with resize
  and center crop, batch 16, one worker) under 16 concurrent clients for `seconds`, first with only
  valid JPEG bodies, then with 10% hostile requests among them (that PNG, a bomb in base64, a
  truncated JPEG, a GIF, random bytes, deep JSON, NaN, a v2 header declaring 2^64 values). Only
  the valid requests are timed; rounds alternate clean and mixed, medians are reported.
- text: a 5 MB text sent to the sentiment model (max 64 tokens), in-process: what the refusal
  costs now, beside what tokenizing it costs (what the worker used to spend before refusing).
"""

from __future__ import annotations

import base64
import io
import json
import random
import statistics
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import yaml

from scripts.bench.harness import BenchRun
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import REPO_ROOT

__all__ = ["measure", "report", "valid_requests", "hostile_requests", "png_declaring", "HOSTILE_SHARE"]

HOSTILE_SHARE = 0.10
CLIENTS = 16
MODEL = "digits_cnn_png"


def measure(run: BenchRun) -> dict:
    """The valid requests' latency without and with a 10% hostile mix, and the 5 MB text's cost."""
    config, seconds, rounds = run.config, run.seconds, run.repeats
    folder = run.root / "hostile"
    folder.mkdir()
    archive = build_archive(_image_spec(folder), export_path=config.model_store).archive
    client = TorchServeClient(config)
    client.register(archive.name, initial_workers=1)
    try:
        _load(client, 0.0, min(seconds, 2))  # warm-up
        runs: dict[str, list[dict]] = {"clean": [], "mixed": []}
        for _ in range(rounds):
            runs["clean"].append(_load(client, 0.0, seconds))
            runs["mixed"].append(_load(client, HOSTILE_SHARE, seconds))
    finally:
        client.unregister(MODEL)
    mix = {name: _median(rows) for name, rows in runs.items()}
    return {"mix": mix, "p99_ratio": mix["mixed"]["valid_p99_ms"] / mix["clean"]["valid_p99_ms"],
            "text": _text_cost(folder)}


def report(results: dict) -> None:
    mix, text = results["hostile"]["mix"], results["hostile"]["text"]
    print(f"\nhostile traffic, digits CNN with image preprocessing, batch 16, 1 worker, c={CLIENTS}"
          f"; only valid requests timed")
    for name, row in mix.items():
        print(f"  {name:6} valid {row['valid_per_s']:7.1f} req/s  p50 {row['valid_p50_ms']:6.1f} ms  "
              f"p99 {row['valid_p99_ms']:6.1f} ms  valid answered 200: {row['valid_ok']}/"
              f"{row['valid_sent']}  hostile 4xx: {row['hostile_4xx']}/{row['hostile_sent']}  "
              f"5xx: {row['five_hundreds']}")
    print(f"  valid p99 with {HOSTILE_SHARE:.0%} hostile / without: "
          f"{results['hostile']['p99_ratio']:.2f}x (target <= 1.5x)")
    print(f"  a {text['chars']:,}-character text (max 64 tokens): decoded and refused in "
          f"{text['refusal_ms']:.2f} ms; tokenizing it would take {text['tokenize_ms']:.0f} ms")


# ---- the mix ----

def _image_spec(folder: Path) -> Path:
    from model_defs import create_model

    torch.manual_seed(0)
    torch.save(create_model("digits_cnn").eval().state_dict(), folder / "w.pt")
    data = yaml.safe_load((REPO_ROOT / "model_defs" / "specs" / "digits_cnn_png.yaml").read_text())
    data["weights"] = "w.pt"
    data["input"]["image"].update(resize=8, center_crop=8)
    (folder / "spec.yaml").write_text(yaml.safe_dump(data))
    return folder / "spec.yaml"


def valid_requests() -> list[tuple[bytes, str, dict]]:
    from PIL import Image

    bodies = []
    for seed in range(8):
        pixels = np.random.default_rng(seed).integers(0, 255, (24 + seed, 32), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels, "L").save(out, format="JPEG", quality=90)
        bodies.append((out.getvalue(), "image/jpeg", {}))
    return bodies


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height: Pillow's bomb check fires on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


def hostile_requests() -> dict[str, tuple[bytes, str, dict]]:
    """Named hostile requests for an image model: (body, content type, extra headers)."""
    from PIL import Image

    bomb = png_declaring(40_000, 40_000)
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    jpeg = valid_requests()[0][0]
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2**32, 2**32],
                                     "parameters": {"binary_data_size": "8"}}]}).encode()
    return {
        "40000x40000 png": (bomb, "image/png", {}),
        "bomb in b64": (json.dumps({"inputs": {"b64": base64.b64encode(bomb).decode()}}).encode(),
                        "application/json", {}),
        "truncated jpeg": (jpeg[:len(jpeg) // 2], "image/jpeg", {}),
        "gif sent as png": (gif.getvalue(), "image/png", {}),
        "random bytes": (random.Random(0).randbytes(4000), "image/webp", {}),
        "deep json": (b"[" * 5000 + b"]" * 5000, "application/json", {}),
        "nan": (b'{"inputs": [NaN]}', "application/json", {}),
        "v2 huge shape": (header + b"\0" * 8, "application/octet-stream",
                          {"Inference-Header-Content-Length": str(len(header))}),
        "v2 header not json": (b"\xff" * 64, "application/octet-stream",
                               {"Inference-Header-Content-Length": "32"}),
    }


def _load(client: TorchServeClient, hostile_share: float, seconds: float) -> dict:
    """CLIENTS threads sending for `seconds`, each request hostile with `hostile_share`."""
    valid, hostile = valid_requests(), list(hostile_requests().values())
    latencies: list[float] = []
    counts = {"valid_sent": 0, "valid_ok": 0, "hostile_sent": 0, "hostile_4xx": 0, "five_hundreds": 0}
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        chooser = random.Random(seed)
        while time.perf_counter() < deadline:
            is_hostile = chooser.random() < hostile_share
            body, content_type, headers = chooser.choice(hostile if is_hostile else valid)
            started = time.perf_counter()
            answer = client.post(f"/predictions/{MODEL}", body, content_type=content_type,
                                 headers=headers)
            elapsed = time.perf_counter() - started
            with lock:
                counts["five_hundreds"] += answer.status >= 500
                if is_hostile:
                    counts["hostile_sent"] += 1
                    counts["hostile_4xx"] += 400 <= answer.status < 500
                else:
                    counts["valid_sent"] += 1
                    counts["valid_ok"] += answer.status == 200
                    latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return {**counts, "valid_per_s": len(latencies) / wall,
            "valid_p50_ms": 1000 * ordered[len(ordered) // 2],
            "valid_p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def _median(rows: list[dict]) -> dict:
    """The run with the median valid p99 (its figures kept together)."""
    return sorted(rows, key=lambda row: row["valid_p99_ms"])[len(rows) // 2]


# ---- the text ----

def _text_cost(folder: Path) -> dict:
    """A 5 MB text in a JSON body through the handler's decode path (JSON parse included), and
    the tokenizer alone on the same text."""
    from handlers.errors import RequestError
    from handlers.inputs import InputCodec
    from handlers.protocols import Protocols
    from handlers.spec import load_spec

    spec_dir = REPO_ROOT / "model_defs" / "specs"
    spec = load_spec(spec_dir / "sentiment.yaml")
    codec = InputCodec(spec, spec_dir)
    protocols = Protocols(spec, codec)
    text = "good " * 1_000_000
    body = json.dumps({"inputs": {"input_ids": text}}).encode()
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        try:
            protocols.decode({"body": body}, {})
        except RequestError:
            timings.append(time.perf_counter() - started)
    started = time.perf_counter()
    codec.tokenizer.encode(text)
    tokenize = time.perf_counter() - started
    return {"chars": len(text), "refusal_ms": 1000 * statistics.median(timings),
            "tokenize_ms": 1000 * tokenize}
