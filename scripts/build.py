"""`mar build`: validate a spec and its weights, then package a self-contained `.mar`.

Validation uses the handler's own loading code (handlers.loading) and runs one forward pass; only a
model that passes is packaged, so a failed build writes nothing and leaves any existing archive of the
same name untouched (the new archive replaces it in one atomic rename).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from handlers.loading import build_model, example_input
from handlers.model_handler import SPEC_FILE
from handlers.spec import ModelSpec, load_spec, spec_to_dict
from model_defs import definition_files
from scripts.config import REPO_ROOT
from scripts.errors import MarError

__all__ = ["BuildResult", "build_archive", "DEFAULT_EXPORT_PATH"]

DEFAULT_EXPORT_PATH = REPO_ROOT / "model_store"
HANDLER_FILE = REPO_ROOT / "handlers" / "model_handler.py"
# The handlers package files the handler imports; they travel in every archive.
RUNTIME_FILES = ("__init__.py", "spec.py", "loading.py")
MODEL_CONFIG_FILE = "model-config.yaml"
_RESERVED_NAMES = {SPEC_FILE, MODEL_CONFIG_FILE, HANDLER_FILE.name, "handlers", "model_defs", "MAR-INF"}


@dataclass(frozen=True)
class BuildResult:
    archive: Path
    spec: ModelSpec
    weights: Path
    parameters: int
    output_shape: tuple[int, ...]


def build_archive(spec_path: str | Path, *, weights: str | Path | None = None,
                  export_path: str | Path = DEFAULT_EXPORT_PATH) -> BuildResult:
    """Validate `spec_path` with its weights and write `<export_path>/<name>.mar`.

    Raises MarError (or SpecError/WeightsError, both ValueError) with the cause and the fix.
    """
    spec = load_spec(spec_path)
    weights_path = Path(weights).resolve() if weights else spec.weights_path(REPO_ROOT)
    if not weights_path.is_file():
        raise MarError(f"--weights {weights_path} is not a file. Pass the state_dict file.")
    _check_weights_name(weights_path)
    parameters, output_shape = validate(spec, weights_path)
    export_dir = Path(export_path).resolve()
    export_dir.mkdir(parents=True, exist_ok=True)
    archive = _package(spec, weights_path, export_dir)
    return BuildResult(archive, spec, weights_path, parameters, output_shape)


def validate(spec: ModelSpec, weights_path: Path) -> tuple[int, tuple[int, ...]]:
    """Load the weights exactly as the handler will and run one forward pass on the CPU.

    Returns the parameter count and the output shape for a batch of one.
    """
    model = build_model(spec, weights_path, device=torch.device("cpu"))
    batch = example_input(spec, 1, device=torch.device("cpu"))
    try:
        with torch.inference_mode():
            output = model(batch)
    except Exception as err:  # noqa: BLE001 - any failure here is the model's, reported whole
        raise MarError(f"{spec.source}: forward pass on an input of shape {list(batch.shape)} "
                       f"({spec.input.dtype}) failed: {type(err).__name__}: {err}. Check "
                       "`input.shape` (without the batch dimension) and `params`.") from None
    if not isinstance(output, torch.Tensor):
        raise MarError(f"{spec.source}: the model returned {type(output).__name__}; the handler "
                       "serves models whose forward() returns one tensor.")
    return sum(p.numel() for p in model.parameters()), tuple(output.shape)


def _package(spec: ModelSpec, weights_path: Path, export_dir: Path) -> Path:
    from model_archiver import ModelArchiver, ModelArchiverConfig

    # The staging folder sits in the export folder so the final rename is atomic.
    with tempfile.TemporaryDirectory(prefix=".mar-build-", dir=export_dir) as staging:
        staging = Path(staging)
        extra = _stage_sources(spec, weights_path, staging / "extra")
        config_file = staging / MODEL_CONFIG_FILE
        config_file.write_text(yaml.safe_dump(model_config(spec), sort_keys=False))
        out = staging / "out"
        out.mkdir()
        with _private_tempdir(staging / "tmp"), _quiet_archiver():
            ModelArchiver.generate_model_archive(ModelArchiverConfig(
                model_name=spec.name, version=spec.version, handler=str(HANDLER_FILE),
                serialized_file=str(weights_path), extra_files=str(extra),
                config_file=str(config_file), export_path=str(out), archive_format="zip-store",
            ))
        archive = export_dir / f"{spec.name}.mar"
        os.replace(out / f"{spec.name}.mar", archive)
    return archive


def model_config(spec: ModelSpec) -> dict:
    """TorchServe's per-model config (model-config.yaml) generated from the spec's `serving`."""
    serving = spec.serving
    config = {
        "minWorkers": serving.min_workers,
        "maxWorkers": serving.max_workers,
        "batchSize": serving.batch_size,
        "maxBatchDelay": serving.max_batch_delay_ms,
        "responseTimeout": serving.response_timeout_s,
        "startupTimeout": serving.response_timeout_s,
    }
    if serving.device != "auto":
        config["deviceType"] = serving.device
    return config


def _stage_sources(spec: ModelSpec, weights_path: Path, extra: Path) -> Path:
    """Copy what the handler imports, plus the archive's spec, into `extra` (the archive root)."""
    (extra / "handlers").mkdir(parents=True)
    for name in RUNTIME_FILES:
        shutil.copy2(HANDLER_FILE.parent / name, extra / "handlers" / name)
    package_dir = REPO_ROOT / "model_defs"
    for source in definition_files(spec.arch):
        target = extra / "model_defs" / source.relative_to(package_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    archived_spec = spec_to_dict(spec, weights=weights_path.name)
    (extra / SPEC_FILE).write_text(yaml.safe_dump(archived_spec, sort_keys=False))
    return extra


def _check_weights_name(weights_path: Path) -> None:
    if weights_path.name in _RESERVED_NAMES:
        raise MarError(f"weights file name {weights_path.name!r} collides with a file the archive "
                       f"needs ({', '.join(sorted(_RESERVED_NAMES))}). Rename the weights file.")


@contextlib.contextmanager
def _private_tempdir(path: Path):
    """torch-model-archiver stages into <tempdir>/<model name>: give each build its own tempdir,
    so two builds of one model cannot collide and nothing is left behind on failure."""
    path.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield
    finally:
        tempfile.tempdir = saved


@contextlib.contextmanager
def _quiet_archiver():
    """The archiver logs at INFO through the root logger; keep `mar build`'s output ours."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
