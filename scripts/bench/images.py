"""images: JPEG bodies into ResNet-18 (model_defs/specs/resnet18_jpeg.yaml): decode + preprocess
cost per image, and requests/s with p50/p99.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from scripts.bench.drivers import median_run, wrk_run
from scripts.bench.harness import BenchRun
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import REPO_ROOT, ServerConfig

__all__ = ['measure', 'report']


def measure(run: BenchRun) -> dict:
    return _bench_images(run.config, run.root, run.seconds, run.repeats)


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
            "ours": median_run(runs), "stock image_classifier": STOCK_IMAGE_CLASSIFIER_BLOCKED}


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


def report(results: dict) -> None:
    images = results["images"]
    row = images["ours"]
    print(f"\nimages, ResNet-18, {images['jpeg_bytes']:,}-byte 640x480 JPEG bodies, batch 8, 1 worker, c=8")
    print(f"  decode + preprocess (resize 256, crop 224, normalize): "
          f"{images['decode_preprocess_ms_per_image']:.2f} ms per image")
    print(f"  ours                   {row['requests_per_s']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
          f"p99 {row['p99_ms']:7.1f} ms  failed {row['failed']}")
    print(f"  stock image_classifier not measured: {images['stock image_classifier']}")
