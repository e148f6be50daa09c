"""Helpers the tests share: specs and weights in temporary folders, the `mar` command, a tampered
archive. Fixtures live in conftest.py files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DIGITS_SPEC = REPO_ROOT / "model_defs" / "specs" / "digits_cnn.yaml"
MAR = Path(sys.executable).parent / "mar"


def digits_spec_data(**overrides) -> dict:
    """The bundled digits spec as data, with top-level keys replaced by `overrides`."""
    data = yaml.safe_load(DIGITS_SPEC.read_text())
    data.update(overrides)
    return data


def write_spec(folder: Path, data: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def run_mar(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed `mar` command as a user would (a process of its own)."""
    result = subprocess.run([str(MAR), *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"mar {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def tamper_weights(archive: Path, out: Path, weights_name: str) -> Path:
    """A copy of `archive` whose weights file has one bias changed: what an attacker, or a bad
    copy, would leave behind. The build record inside is left as it was."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == weights_name:
                state = torch.load(io.BytesIO(data), weights_only=True)
                state["classifier.4.bias"] += 1.0
                buffer = io.BytesIO()
                torch.save(state, buffer)
                data = buffer.getvalue()
            dst.writestr(item, data)
    return out


def example_spec(folder: Path, name: str, **overrides) -> tuple[Path, torch.nn.Module]:
    """A copy of model_defs/specs/<name>.yaml (and its tokenizer) in `folder`, with seeded random
    weights beside it and top-level keys replaced by `overrides`; returns the spec and the model."""
    from model_defs import create_model

    data = yaml.safe_load((REPO_ROOT / "model_defs" / "specs" / f"{name}.yaml").read_text())
    data.update(overrides, weights="weights.pt")
    if "tokenizer" in data:
        source = REPO_ROOT / "model_defs" / "specs" / data["tokenizer"]["file"]
        (folder / data["tokenizer"]["file"]).write_bytes(source.read_bytes())
    torch.manual_seed(0)
    model = create_model(data["arch"], **data["params"]).eval()
    save_weights(model, folder / "weights.pt")
    return write_spec(folder, data, f"{name}.yaml"), model


def digits_png_spec(folder: Path, **image) -> tuple[Path, torch.nn.Module]:
    """model_defs/specs/digits_cnn_png.yaml (the digits CNN fed PNGs) in `folder` with seeded
    weights, its `image` settings updated by `image`; returns the spec and the model."""
    data = yaml.safe_load((REPO_ROOT / "model_defs" / "specs" / "digits_cnn_png.yaml").read_text())
    return example_spec(folder, "digits_cnn_png",
                        input={**data["input"], "image": {**data["input"]["image"], **image}})


class InProcessHandler:
    """An extracted archive served by our handler in this process, with TorchServe's own Context:
    `send` answers a batch as a worker would."""

    def __init__(self, folder: Path) -> None:
        from handlers.model_handler import ModelHandler

        self.folder = folder
        self.handler = ModelHandler()
        self.handler.initialize(self._context([{}]))

    def _context(self, headers: list[dict]):
        from ts.context import Context, RequestProcessor

        context = Context("m", str(self.folder), {"model": {"modelVersion": "1.0"}}, len(headers),
                          None, "0.12.0")
        context.request_processor = [RequestProcessor(h) for h in headers]
        return context

    def send(self, requests: list[dict], headers: list[dict] | None = None) -> list[tuple]:
        """(body, decoded when JSON; status; response headers) per request."""
        headers = headers or [{} for _ in requests]
        context = self._context(headers)
        bodies = self.handler.handle(requests, context)
        assert len(bodies) == len(requests), f"{len(bodies)} answers to {len(requests)} requests"
        return [(json.loads(body) if context.get_response_content_type(i) == "application/json"
                 else body, context.get_response_status(i)[0], context.get_response_headers(i))
                for i, body in enumerate(bodies)]

    def one(self, body, headers=None):
        request = {"body": json.dumps(body).encode()} if isinstance(body, dict) else body
        return self.send([request], [headers or {}])[0]



def digits_versions(folder: Path, versions=("1.0",), *, archive_format: str = "mar",
                    store: Path | None = None) -> dict[str, Path]:
    """The digits CNN (seeded weights, the bundled spec) built at each of `versions` into
    `store` (default: folder/store); returns the archive of each version."""
    from model_defs import create_model
    from scripts.build import build_archive

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_weights(create_model("digits_cnn", **digits_spec_data()["params"]), folder / "digits.pt")
    built = {}
    for version in versions:
        spec = write_spec(folder, digits_spec_data(weights="digits.pt", version=version),
                          f"digits-{version}.yaml")
        built[version] = build_archive(spec, export_path=store or folder / "store",
                                       archive_format=archive_format).archive
    return built


def digits_model() -> torch.nn.Module:
    """The model `digits_versions` builds, in eval mode."""
    from model_defs import create_model

    torch.manual_seed(0)
    return create_model("digits_cnn", **digits_spec_data()["params"]).eval()


def counting_detector(gain: float = 1.0) -> torch.nn.Module:
    """A detector whose boxes follow brightness: a black image has none, a bright one a box per
    8x8 cell (anchors that never overlap, so NMS keeps them all), capped at 100."""
    from model_defs import create_model

    model = create_model("anchor_detector", num_classes=2, channels=4, anchor_sizes=[8.0],
                         detections=100).eval()
    with torch.no_grad():
        for layer in model.backbone:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.fill_(0.05)
                layer.bias.zero_()
        model.cls_logits.weight.zero_()
        model.cls_logits.weight[1].fill_(gain)  # class 1 ("thing") rises with the features
        model.cls_logits.bias.fill_(-4.0)
        model.bbox_pred.weight.zero_()
        model.bbox_pred.bias.zero_()
    return model


def png(height: int, width: int, level: int | None = None, seed: int = 0) -> bytes:
    """An RGB PNG: every pixel `level`, or seeded noise."""
    import numpy as np
    from PIL import Image

    pixels = np.full((height, width, 3), level, np.uint8) if level is not None else \
        np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()
