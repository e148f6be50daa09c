"""images: JPEG bodies into ResNet-18 (model_defs/specs/resnet18_jpeg.yaml), ours beside
TorchServe's stock image_classifier handler (stock_images.py: its own venv and server), the same
state_dict, the same JPEGs, batching and torch threads on both: the top-5 each answers per image,
decode + preprocess cost per image, and requests/s with p50/p99, fp32 and what bf16 adds.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import torch
import yaml

from scripts.bench.drivers import median_run, wrk_run
from scripts.bench.harness import BenchRun
from scripts.bench.stock_images import stock_classifier_archive, stock_server
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import REPO_ROOT, ServerConfig

__all__ = ['measure', 'report']

BATCH, CLIENTS, THREADS, IMAGES = 8, 8, 1, 16
STOCK = "stock image_classifier"
# (label, precision): ours at each
OURS = (("ours fp32", "fp32"), ("ours bf16", "bf16"))


def measure(run: BenchRun) -> dict:
    folder = run.root / "images"
    folder.mkdir()
    photos = _photos(folder / "jpegs")
    data = _spec_data(folder)
    ours = {label: _our_archive(run.config, folder, data, precision) for label, precision in OURS}
    with stock_server(run.root / "stock-server", threads=THREADS) as stock_config:
        stock = stock_classifier_archive(folder / "weights.pt", data["params"]["num_classes"],
                                         folder / "stock", stock_config.model_store,
                                         batch_size=BATCH, max_batch_delay_ms=5)
        servers = {**{label: (run.config, name) for label, (name, _) in ours.items()},
                   STOCK: (stock_config, stock)}
        files = {**{label: file for label, (_, file) in ours.items()}, STOCK: f"{stock}.mar"}
        for label, (config, _) in servers.items():
            TorchServeClient(config).register(files[label], initial_workers=1)
        try:
            top5 = {label: [_top5(config, name, photo) for photo in photos]
                    for label, (config, name) in servers.items()}
            throughput = _rounds(servers, photos, run.seconds, run.repeats)
        finally:
            for config, name in servers.values():
                TorchServeClient(config).unregister(name)
    return {"images": len(photos), "decode_preprocess_ms_per_image": _preprocess_ms(folder, photos),
            "top5": top5, "same_top5": {label: _same(top5[label], top5[STOCK]) for label in ours},
            "throughput": throughput}
def _spec_data(folder: Path) -> dict:
    """model_defs/specs/resnet18_jpeg.yaml with seeded weights, class i named "i" as the stock
    side's index_to_name.json names it, the top 5 in each answer as the stock handler gives."""
    from model_defs import create_model

    data = yaml.safe_load((REPO_ROOT / "model_defs" / "specs" / "resnet18_jpeg.yaml").read_text())
    torch.manual_seed(0)
    torch.save(create_model(data["arch"], **data["params"]).state_dict(), folder / "weights.pt")
    classes = data["params"]["num_classes"]
    return {**data, "weights": "weights.pt", "labels": [str(i) for i in range(classes)],
            "top_k": 5, "serving": {**data["serving"], "batch_size": BATCH, "cpu_threads": THREADS,
                                    "max_batch_delay_ms": 5, "response_timeout_s": 600}}


def _our_archive(config: ServerConfig, folder: Path, data: dict, precision: str) -> tuple[str, str]:
    """Ours at `precision` (bf16 gated on the bench's JPEGs): its model name and archive file."""
    name = f"resnet18_jpeg_{precision}"
    dtype = precision if precision == "fp32" else {"dtype": precision,
                                                   "evaluation": {"files": "jpegs"}}
    spec = folder / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({**data, "name": name,
                                    "serving": {**data["serving"], "precision": dtype}}))
    return name, build_archive(spec, export_path=config.model_store).archive.name


def _photos(folder: Path) -> list[Path]:
    """IMAGES seeded JPEGs of different sizes and scenes (landscape, portrait, small, large)."""
    folder.mkdir()
    sizes = [(640, 480), (480, 640), (300, 300), (1024, 768)]
    paths = []
    for index in range(IMAGES):
        path = folder / f"photo-{index:02d}.jpg"
        path.write_bytes(_photo_jpeg(*sizes[index % len(sizes)], seed=index))
        paths.append(path)
    return paths


def _photo_jpeg(width: int = 640, height: int = 480, seed: int = 2) -> bytes:
    """A seeded picture: a colour ramp in a seeded direction, blobs and noise; JPEG quality 90."""
    import io

    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    angle = generator.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys)[..., None] * generator.uniform(0, 1, 3)
    blobs = sum(np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / r ** 2)[..., None] *
                generator.uniform(-1, 1, 3)
                for cx, cy, r in generator.uniform((0, 0, 0.05), (1, 1, 0.3), (6, 3)))
    pixels = 0.4 + 0.5 * ramp + 0.4 * blobs + 0.1 * generator.standard_normal((height, width, 3))
    out = io.BytesIO()
    Image.fromarray((255 * pixels.clip(0, 1)).astype("uint8"), "RGB").save(out, format="JPEG",
                                                                          quality=90)
    return out.getvalue()


def _top5(config: ServerConfig, name: str, photo: Path) -> list[str]:
    """The five classes a model answers for one JPEG, best first (our prediction's
    `probabilities`, the stock handler's {class: probability}: each the top 5)."""
    response = TorchServeClient(config).post(f"/predictions/{name}", photo.read_bytes(),
                                             content_type="image/jpeg")
    answer = orjson.loads(response.body)
    ranked = answer["predictions"][0]["probabilities"] if "predictions" in answer else answer
    return sorted(ranked, key=ranked.get, reverse=True)


def _same(ours: list[list[str]], stock: list[list[str]]) -> dict:
    return {"same_set": sum(set(a) == set(b) for a, b in zip(ours, stock)),
            "same_order": sum(a == b for a, b in zip(ours, stock)),
            "same_top1": sum(a[0] == b[0] for a, b in zip(ours, stock)), "images": len(ours)}


def _rounds(servers: dict, photos: list[Path], seconds: float, rounds: int) -> dict:
    """wrk over the JPEGs in turn, CLIENTS connections, each variant once per round (interleaved:
    load drifts on a 2-core machine); the median per variant."""
    def load(label: str, length: float) -> dict:
        config, name = servers[label]
        return wrk_run(config, f"/predictions/{name}", body=photos, level=CLIENTS,
                       seconds=length, content_type="image/jpeg")

    for label in servers:
        load(label, min(seconds, 3))  # warm-up
    runs = {label: [] for label in servers}
    for _ in range(rounds):
        for label in servers:
            runs[label].append(load(label, seconds))
    return {label: median_run(rows) for label, rows in runs.items()}


def _preprocess_ms(folder: Path, photos: list[Path]) -> float:
    """Our decode + preprocess (resize 256, crop 224, normalize), ms per image."""
    from handlers.kinds.image import preprocess
    from handlers.spec import load_spec

    model_input = load_spec(folder / "resnet18_jpeg_fp32.yaml").input
    bodies = [photo.read_bytes() for photo in photos]
    preprocess(bodies[0], model_input, "warm-up")
    started = time.perf_counter()
    for body in bodies * 3:
        preprocess(body, model_input, "bench")
    return (time.perf_counter() - started) / (3 * len(bodies)) * 1000


def report(results: dict) -> None:
    images = results["images"]
    print(f"\nimages, ResNet-18, {images['images']} JPEGs (300x300 to 1024x768), batch {BATCH}, "
          f"1 worker, {THREADS} torch thread, c={CLIENTS}; stock = TorchServe's image_classifier")
    print(f"  our decode + preprocess (resize 256, crop 224, normalize): "
          f"{images['decode_preprocess_ms_per_image']:.2f} ms per image")
    stock = images["throughput"][STOCK]["requests_per_s"]
    for label, row in images["throughput"].items():
        same = images["same_top5"].get(label)
        agreement = (f"top-5 as stock {same['same_set']}/{same['images']} (in order "
                     f"{same['same_order']}), top-1 {same['same_top1']}/{same['images']}"
                     if same else "")
        print(f"  {label:<24} {row['requests_per_s']:7.1f} req/s  {row['requests_per_s'] / stock:5.2f}x"
              f" stock  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  failed "
              f"{row['failed']}  {agreement}")
