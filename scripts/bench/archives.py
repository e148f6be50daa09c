"""What the benchmarks serve: the sized MLP (ours, and the same network as a stock `--model-file`),
archives made the stock way by torch-model-archiver (TorchServe's BaseHandler, or a no-op handler,
TorchServe's own ceiling), and the demo spec's batching.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

from scripts.config import DEMO_SPEC, REPO_ROOT

ASSETS = Path(__file__).resolve().parent / "assets"
# The stock handlers log the same report line as ours; torch-model-archiver packs this beside them.
WORKER_REPORT = REPO_ROOT / "handlers" / "worker_report.py"

__all__ = ['ASSETS', 'make_bench_model', 'stock_archive', 'demo_spec', 'demo_serving']


def make_bench_model(root: Path, size_mb: int) -> dict:
    """An MLP of four width x width Linear layers whose fp32 state_dict is about size_mb."""
    width = max(64, int(math.sqrt(size_mb * 2**20 / 16)) // 64 * 64)
    params = {"in_features": width, "hidden_sizes": [width] * 3, "out_features": width}
    folder = root / "bench_model"
    folder.mkdir()
    layers = [torch.nn.Linear(width, width) for _ in range(4)]
    state = {}
    for i, layer in enumerate(layers):
        state[f"layers.{3 * i}.weight"] = layer.weight.detach()
        state[f"layers.{3 * i}.bias"] = layer.bias.detach()
    torch.save(state, folder / "weights.pt")
    spec = {"name": "bench_ours", "version": "1.0", "arch": "mlp", "params": params,
            "weights": "weights.pt", "input": {"shape": [width]},
            "serving": {"batch_size": 1, "response_timeout_s": 600}}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (folder / "model.py").write_text(_stock_mlp_source(width))
    return {"folder": folder, "spec": folder / "spec.yaml", "weights": folder / "weights.pt",
            "width": width, "bytes": (folder / "weights.pt").stat().st_size}


def _stock_mlp_source(width: int) -> str:
    """The same network as a stock `--model-file`: one class, no constructor arguments."""
    return f'''import torch
from torch import nn


class BenchMLP(nn.Module):
    def __init__(self):
        super().__init__()
        w = {width}
        self.layers = nn.Sequential(
            nn.Linear(w, w), nn.ReLU(), nn.Dropout(0.0),
            nn.Linear(w, w), nn.ReLU(), nn.Dropout(0.0),
            nn.Linear(w, w), nn.ReLU(), nn.Dropout(0.0),
            nn.Linear(w, w))

    def forward(self, x):
        return self.layers(x)
'''


def stock_archive(model: dict, export: Path, archive_format: str, *, name: str = "bench_stock",
                   handler: Path = ASSETS / "stock_handler.py", model_file: bool = True,
                   config_file: Path | None = None) -> Path:
    """An archive made the stock way, by torch-model-archiver itself."""
    from model_archiver import ModelArchiver, ModelArchiverConfig

    ModelArchiver.generate_model_archive(ModelArchiverConfig(
        model_name=name, version="1.0", handler=str(handler),
        model_file=str(model["folder"] / "model.py") if model_file else None,
        serialized_file=str(model["weights"]), export_path=str(export),
        archive_format=archive_format, force=True, extra_files=str(WORKER_REPORT),
        config_file=str(config_file) if config_file else None))
    return export / f"{name}.mar"


def demo_spec() -> dict:
    return yaml.safe_load(DEMO_SPEC.read_text())


def demo_serving() -> dict:
    serving = demo_spec()["serving"]
    return {key: serving[key] for key in ("batch_size", "max_batch_delay_ms")}
