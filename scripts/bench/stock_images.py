"""The stock side of the images bench: TorchServe's own `image_classifier` handler, as its
ResNet-18 example packs it, served by a TorchServe of its own from a venv of its own.

The handler imports torchvision, and no torchvision imports beside this project's torch 2.13.0 CPU
build, so the stock side runs torch 2.14.1 with torchvision 0.29.1 (both on this machine's disk;
pip's constraints file allows exactly these) and torchserve 0.12.0, in `.venv-stock`. The venv is
made on first use: several minutes and about 5.5 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.config import REPO_ROOT, ServerConfig, private_env, read_config, write_private_config
from scripts.server import start_server, stop_server

__all__ = ["STOCK_VENV", "stock_torchserve", "stock_classifier_archive", "stock_server"]

STOCK_VENV = REPO_ROOT / ".venv-stock"
# torchserve 0.12 imports yaml and its image_classifier captum (for explanations) without
# declaring them; torchvision's ToTensor needs numpy
_PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "torchserve==0.12.0", "pyyaml", "numpy",
             "captum")

# TorchServe's examples/image_classifier/resnet_18/model.py: torchvision's ResNet-18, whose
# state_dict keys are model_defs/resnet.py's
_MODEL_FILE = '''from torchvision.models.resnet import BasicBlock, ResNet


class ImageClassifier(ResNet):
    def __init__(self):
        super(ImageClassifier, self).__init__(BasicBlock, [2, 2, 2, 2])
'''


def stock_torchserve() -> Path:
    """`torchserve` in the stock venv, which is made and filled first if it is not there yet.
    Its workers run the venv's Python (torchserve passes its own interpreter to the frontend)."""
    executable = STOCK_VENV / "bin" / "torchserve"
    done = STOCK_VENV / ".installed"
    if not done.exists():
        print(f"making {STOCK_VENV} for the stock image_classifier ({', '.join(_PACKAGES)}; "
              "several minutes, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(STOCK_VENV)], check=True)
        subprocess.run([str(STOCK_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", *_PACKAGES], check=True)
        done.touch()
    return executable


def stock_classifier_archive(weights: Path, classes: int, folder: Path, store: Path, *,
                             batch_size: int, max_batch_delay_ms: int,
                             name: str = "resnet18_stock") -> str:
    """ResNet-18 packed as TorchServe's example packs it (`--model-file`, `--serialized-file`,
    `--handler image_classifier`, an index_to_name.json naming class i "i", the batching in a
    `--config-file`); its model name."""
    from model_archiver import ModelArchiver, ModelArchiverConfig

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(_MODEL_FILE)
    (folder / "index_to_name.json").write_text(json.dumps({str(i): str(i) for i in range(classes)}))
    (folder / "model-config.yaml").write_text(
        f"minWorkers: 1\nmaxWorkers: 1\nbatchSize: {batch_size}\n"
        f"maxBatchDelay: {max_batch_delay_ms}\nresponseTimeout: 600\n")
    ModelArchiver.generate_model_archive(ModelArchiverConfig(
        model_name=name, version="1.0", handler="image_classifier",
        model_file=str(folder / "model.py"), serialized_file=str(weights), export_path=str(store),
        extra_files=str(folder / "index_to_name.json"), archive_format="default", force=True,
        config_file=str(folder / "model-config.yaml")))
    return name


@contextmanager
def stock_server(root: Path, *, threads: int) -> Iterator[ServerConfig]:
    """A private TorchServe started from the stock venv, its workers at `threads` torch threads
    (the stock handler sets none: OMP_NUM_THREADS is what torch reads)."""
    executable = stock_torchserve()
    root.mkdir(parents=True, exist_ok=True)
    config = read_config(write_private_config(root))
    config.model_store.mkdir(parents=True, exist_ok=True)
    env = {**private_env(root), "OMP_NUM_THREADS": str(threads)}
    start_server(config, env=env, restore=False, torchserve=executable)
    try:
        yield config
    finally:
        stop_server(config, env=env, torchserve=executable)
