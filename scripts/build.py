"""`mar build`: validate a spec and its weights, then package a self-contained, reproducible archive.

Validation uses the handler's own loading code (handlers.loading) and runs the golden batch through
the eval-mode model; only a model that passes is packaged, so a failed build writes nothing and
leaves any existing archive of the same name untouched (the new one replaces it atomically).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from handlers.integrity import BUILD_INFO_FILE, GOLDEN_FILE, SPEC_FILE, tolerance
from handlers.loading import LoadedModel, blake3_file, build_model, example_input, sha256_file
from handlers.spec import ModelSpec, load_spec, spec_to_dict
from model_defs import definition_files
from scripts.archive import MANIFEST_NAME, Member, archive_path, manifest_json, write_archive
from scripts.config import REPO_ROOT
from scripts.errors import MarError

__all__ = ["BuildResult", "build_archive", "model_config", "RUNTIME_FILES"]

HANDLER_FILE = REPO_ROOT / "handlers" / "model_handler.py"
# The handlers package files the handler imports; they travel in every archive.
RUNTIME_FILES = ("__init__.py", "spec.py", "loading.py", "integrity.py", "protocols.py")
MODEL_CONFIG_FILE = "model-config.yaml"


@dataclass(frozen=True)
class BuildResult:
    archive: Path
    archive_sha256: str | None  # None for the folder format
    spec: ModelSpec
    weights: Path
    weights_sha256: str
    parameters: int
    output_shape: tuple[int, ...]
    checkpoint_notes: list[str]
    let_through_missing: tuple[str, ...]
    ignored_unexpected: tuple[str, ...]


def build_archive(spec_path: str | Path, *, export_path: str | Path, weights: str | Path | None = None,
                  archive_format: str = "mar") -> BuildResult:
    """Validate `spec_path` with its weights and write `<export_path>/<name>-<version>.mar` (or
    the folder `<export_path>/<name>-<version>` for archive_format="folder").

    Raises MarError, SpecError or WeightsError (both ValueError) with the cause and the fix.
    """
    spec = load_spec(spec_path)
    weights_path = Path(weights).resolve() if weights else spec.weights_path(REPO_ROOT)
    if not weights_path.is_file():
        raise MarError(f"--weights {weights_path} is not a file. Pass the state_dict file.")
    export_dir = Path(export_path).resolve()
    target = archive_path(export_dir, spec.name, spec.version, archive_format)
    # The weights are hashed on the other core while they are validated and copied; the build
    # record that needs the digest is written last.
    with ThreadPoolExecutor(max_workers=1) as pool:
        weights_digest = pool.submit(sha256_file, weights_path)
        loaded, golden = validate(spec, weights_path)
        digests = lambda: {"sha256": weights_digest.result(), "blake3": blake3_file(weights_path)}
        members = _members(spec, weights_path, digests, loaded, golden)
        export_dir.mkdir(parents=True, exist_ok=True)
        write_archive(target, members, archive_format=archive_format)
        weights_sha256 = weights_digest.result()
    return BuildResult(
        archive=target, archive_sha256=sha256_file(target) if archive_format == "mar" else None,
        spec=spec, weights=weights_path, weights_sha256=weights_sha256,
        parameters=sum(p.numel() for p in loaded.model.parameters()),
        output_shape=tuple(golden["outputs"].shape), checkpoint_notes=loaded.checkpoint_notes,
        let_through_missing=loaded.plan.let_through_missing,
        ignored_unexpected=loaded.plan.ignored_unexpected)


def validate(spec: ModelSpec, weights_path: Path) -> tuple[LoadedModel, dict]:
    """Load the weights exactly as the handler will, then run the golden batch (seeded, the spec's
    largest batch) on the CPU. Returns the loaded model and the golden record."""
    loaded = build_model(spec, weights_path, device=torch.device("cpu"))
    inputs = example_input(spec, spec.serving.batch_size, device=torch.device("cpu"))
    try:
        with torch.inference_mode():
            outputs = loaded.model(inputs)
    except Exception as err:  # noqa: BLE001 - any failure here is the model's, reported whole
        raise MarError(f"{spec.source}: forward pass on an input of shape {list(inputs.shape)} "
                       f"({spec.input.dtype}) failed: {type(err).__name__}: {err}. Check "
                       "`input.shape` (without the batch dimension) and `params`.") from None
    if not isinstance(outputs, torch.Tensor):
        raise MarError(f"{spec.source}: the model returned {type(outputs).__name__}; the handler "
                       "serves models whose forward() returns one tensor.")
    rtol, atol = tolerance(spec.serving.precision)
    return loaded, {"inputs": inputs, "outputs": outputs.clone(), "rtol": rtol, "atol": atol}


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
    if serving.device_ids is not None:
        config["deviceIds"] = list(serving.device_ids)
    return config


def _members(spec: ModelSpec, weights_path: Path, weights_digests: Callable[[], dict],
             loaded: LoadedModel, golden: dict) -> dict[str, Member]:
    """Every file of the archive (name -> source); the build record is deferred: it needs the
    weights' digest, which is computed while the rest is written."""
    members: dict[str, Path | bytes] = {HANDLER_FILE.name: HANDLER_FILE}
    for name in RUNTIME_FILES:
        members[f"handlers/{name}"] = HANDLER_FILE.parent / name
    package_dir = REPO_ROOT / "model_defs"
    for source in definition_files(spec.arch):
        members[f"model_defs/{source.relative_to(package_dir).as_posix()}"] = source
    if weights_path.name in members or weights_path.name in (SPEC_FILE, MODEL_CONFIG_FILE,
                                                             BUILD_INFO_FILE, GOLDEN_FILE):
        raise MarError(f"weights file name {weights_path.name!r} collides with a file the archive "
                       "needs. Rename the weights file.")
    members[SPEC_FILE] = yaml.safe_dump(spec_to_dict(spec, weights=weights_path.name),
                                        sort_keys=False).encode()
    members[MODEL_CONFIG_FILE] = yaml.safe_dump(model_config(spec), sort_keys=False).encode()
    members[GOLDEN_FILE] = _torch_bytes(golden)
    members[MANIFEST_NAME] = manifest_json(name=spec.name, version=spec.version,
                                           handler=HANDLER_FILE.name, weights=weights_path.name,
                                           config_file=MODEL_CONFIG_FILE)
    files = {name: _sha256(source) for name, source in sorted(members.items())}
    members[weights_path.name] = weights_path
    members[BUILD_INFO_FILE] = lambda: (json.dumps(
        _build_record(spec, weights_path, weights_digests(), loaded, files), indent=2,
        sort_keys=True) + "\n").encode()
    return members


def _build_record(spec: ModelSpec, weights_path: Path, weights_digests: dict, loaded: LoadedModel,
                  files: dict[str, str]) -> dict:
    return {
        "format": 1,
        "model": {"name": spec.name, "version": spec.version, "arch": spec.arch},
        "weights": {"file": weights_path.name, "bytes": weights_path.stat().st_size,
                    **weights_digests},  # sha256 for the record, BLAKE3 for fast load-time checks
        "files": files,
        "source": _git_state(),
        "torch_version": torch.__version__,
        "checkpoint": {"normalised": loaded.checkpoint_notes,
                       "let_through_missing": list(loaded.plan.let_through_missing),
                       "ignored_unexpected": list(loaded.plan.ignored_unexpected)},
        "golden": {"file": GOLDEN_FILE, "precision": spec.serving.precision,
                   "batch_size": spec.serving.batch_size},
    }


def _sha256(source: Path | bytes) -> str:
    return hashlib.sha256(source).hexdigest() if isinstance(source, bytes) else sha256_file(source)


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _git_state() -> dict | None:
    """The repo's commit, and whether the packaged sources differ from it; None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "handlers", "model_defs"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"git_commit": commit, "uncommitted_changes": dirty}
