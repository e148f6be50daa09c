"""detection: the example detector (model_defs/specs/detector.yaml, seeded weights) through
TorchServe, JPEG bodies of eight different sizes in turn under wrk, at batch 1 and at the spec's
batch size, side by side: what batching images of different sizes gives on this machine. The
detector takes a list and runs each image through its network alone (so an answer never depends
on its neighbours), so batching saves TorchServe's and the handler's per-request work, not the
network's."""

from __future__ import annotations

import io
import shutil

import numpy as np
import torch
import yaml

from handlers.errors import BenchError
from scripts.bench.drivers import median_run, wrk_run
from scripts.bench.harness import BenchRun
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import REPO_ROOT

__all__ = ["measure", "report", "picture_jpeg"]

SIZES = [(384, 512), (512, 384), (240, 320), (360, 480), (256, 256), (336, 448), (300, 400),
         (288, 352)]  # (height, width), all within the spec's max


def measure(run: BenchRun) -> dict:
    if shutil.which("wrk") is None:
        raise BenchError("the detection benchmark drives the server with wrk: "
                         "`sudo apt-get install wrk`, or leave out the detection part.")
    folder = run.root / "detection"
    folder.mkdir()
    spec = yaml.safe_load((REPO_ROOT / "model_defs" / "specs" / "detector.yaml").read_text())
    from model_defs import create_model

    torch.manual_seed(0)
    torch.save(create_model(spec["arch"], **spec["params"]).state_dict(), folder / "weights.pt")
    batch = spec["serving"]["batch_size"]
    variants = {"batch 1": ("det_b1", 1), f"batch {batch}": ("det_batched", batch)}
    client = TorchServeClient(run.config)
    for name, size in variants.values():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({
            **spec, "name": name, "weights": "weights.pt",
            "serving": {**spec["serving"], "batch_size": size}}))
        archive = build_archive(folder / f"{name}.yaml", export_path=run.config.model_store).archive
        client.register(archive.name, initial_workers=1)
    bodies = [picture_jpeg(folder / f"image-{h}x{w}.jpg", h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    level = min(run.concurrency)  # twice the batch: batches fill, the queue stays short
    rows: dict[str, list[dict]] = {label: [] for label in variants}
    try:
        for label, (name, _) in variants.items():  # warm-up
            wrk_run(run.config, f"/predictions/{name}", body=bodies, level=level,
                    seconds=min(run.seconds, 3), content_type="image/jpeg")
        for _ in range(run.repeats):
            for label, (name, _) in variants.items():
                rows[label].append(wrk_run(run.config, f"/predictions/{name}", body=bodies,
                                           level=level, seconds=run.seconds,
                                           content_type="image/jpeg"))
    finally:
        for name, _ in variants.values():
            client.unregister(name)
    return {"concurrency": level, "sizes": SIZES,
            "variants": {label: median_run(runs) for label, runs in rows.items()}}


def picture_jpeg(path, height: int, width: int, seed: int):
    """A picture with shapes and noise, so the detector has something to score."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((height, width, 3)) * 96).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        draw.ellipse([x, y, x + 40, y + 40], fill=tuple(int(c) for c in rng.integers(128, 256, 3)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    path.write_bytes(out.getvalue())
    return path


def report(results: dict) -> None:
    figures = results["detection"]
    variants = figures["variants"]
    base = next(iter(variants.values()))["requests_per_s"]
    print(f"\ndetection, example detector, JPEGs of {len(figures['sizes'])} sizes "
          f"(up to 512x512) in turn, 1 worker, c={figures['concurrency']} (wrk)")
    for label, row in variants.items():
        print(f"  {label:<10} {row['requests_per_s']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
              f"p99 {row['p99_ms']:7.1f} ms  {row['requests_per_s'] / base:5.2f}x batch 1  "
              f"failed {row['failed']}")
