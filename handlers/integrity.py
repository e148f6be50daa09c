"""Prove that what is served is what was built: the build record and the golden check.

`mar build` writes `build-info.json` (sha256 of every packaged file, the git commit, the torch
version, what the checkpoint load normalised or let through) and `golden.pt` (a seeded input batch
and the eval-mode outputs). The handler checks both at start-up; `mar verify` runs the same check
from an archive alone in a fresh process:

    python -c "import sys; sys.path.insert(0, DIR); from handlers.integrity import main; main([DIR])"
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handlers.loading import build_model, select_device, sha256_file
from handlers.spec import ModelSpec, load_spec

__all__ = ["IntegrityError", "BuildInfo", "BUILD_INFO_FILE", "GOLDEN_FILE", "SPEC_FILE",
           "tolerance", "read_build_info", "check_files", "golden_error", "check_golden",
           "load_archive_model", "main"]

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.yaml"
BUILD_INFO_FILE = "build-info.json"
GOLDEN_FILE = "golden.pt"
# Golden-check tolerances (rtol, atol) by precision: fp32 allows for a different device or thread
# count; fp16/bf16 for their 11- and 8-bit mantissas.
_TOLERANCES = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}


class IntegrityError(RuntimeError):
    """The archive differs from what `mar build` wrote, or the model no longer reproduces its
    golden outputs; the message names the file or the error and the fix."""


@dataclass(frozen=True)
class BuildInfo:
    data: dict[str, Any]

    @property
    def weights_file(self) -> str:
        return self.data["weights"]["file"]

    @property
    def weights_sha256(self) -> str:
        return self.data["weights"]["sha256"]

    @property
    def weights_blake3(self) -> str:
        return self.data["weights"]["blake3"]

    @property
    def files(self) -> dict[str, str]:
        return self.data["files"]


def tolerance(precision: str) -> tuple[float, float]:
    """(rtol, atol) of the golden check at `precision`."""
    return _TOLERANCES[precision]


def read_build_info(model_dir: Path) -> BuildInfo:
    try:
        return BuildInfo(json.loads((model_dir / BUILD_INFO_FILE).read_text()))
    except FileNotFoundError:
        raise IntegrityError(f"{model_dir} has no {BUILD_INFO_FILE}: it was not built by `mar build` "
                             "(or the file was removed). Rebuild it with `mar build SPEC`.") from None


def check_files(model_dir: Path, info: BuildInfo) -> None:
    """Every packaged source file (not the weights, hashed while loading) matches the record."""
    altered = sorted(name for name, digest in info.files.items()
                     if not (model_dir / name).is_file() or sha256_file(model_dir / name) != digest)
    if altered:
        raise IntegrityError(f"{model_dir}: {', '.join(altered)} differ from the archive's build "
                             "record: the archive was altered after `mar build`. Rebuild it.")


def golden_error(model: nn.Module, model_dir: Path, device: torch.device) -> tuple[float, bool]:
    """Run the golden inputs; return the largest absolute difference and whether it is within
    the tolerance recorded with them."""
    golden = torch.load(model_dir / GOLDEN_FILE, map_location="cpu", weights_only=True)
    with torch.inference_mode():
        outputs = model(golden["inputs"].to(device)).float().cpu()
    expected = golden["outputs"].float()
    rtol, atol = float(golden["rtol"]), float(golden["atol"])
    if outputs.shape != expected.shape:
        return float("inf"), False
    error = float((outputs - expected).abs().max())
    return error, bool(torch.allclose(outputs, expected, rtol=rtol, atol=atol))


def check_golden(model: nn.Module, model_dir: Path, device: torch.device) -> float:
    """The golden check; raises IntegrityError beyond tolerance. Also the worker's warm-up."""
    error, within = golden_error(model, model_dir, device)
    if not within:
        raise IntegrityError(
            f"golden check failed in {model_dir}: outputs differ from those recorded at build by up "
            f"to {error:.3g}, beyond the tolerance for this precision. The definition, weights or "
            "torch version changed how the model computes; rebuild and compare with `mar verify`.")
    return error


@dataclass
class ArchiveModel:
    spec: ModelSpec
    model: nn.Module
    device: torch.device
    golden_max_error: float
    weights_bytes: int


def load_archive_model(model_dir: Path, *, gpu_id: int | str | None = None,
                       device: torch.device | None = None) -> ArchiveModel:
    """Everything a worker does before serving: check the build record, load on the device the
    spec and TorchServe's `gpu_id` select (or on `device`), golden-check."""
    spec = load_spec(model_dir / SPEC_FILE)
    info = read_build_info(model_dir)
    check_files(model_dir, info)
    device = device or select_device(spec.serving.device, gpu_id)
    _set_matmul_precision(spec)
    loaded = build_model(spec, model_dir / info.weights_file, device=device,
                         expected_blake3=info.weights_blake3)
    model = loaded.model
    if spec.serving.channels_last:
        # convolutions then run in NHWC; their NCHW inputs are converted inside the first one
        model = model.to(memory_format=torch.channels_last)
    if spec.serving.compile:
        model = _compiled_or_eager(model, model_dir, device)
    error = check_golden(model, model_dir, device)  # also the warm-up, at the largest batch
    weights_bytes = (model_dir / info.weights_file).stat().st_size
    return ArchiveModel(spec, model, device, error, weights_bytes)


def _set_matmul_precision(spec: ModelSpec) -> None:
    """Say explicitly whether fp32 matmuls may use TF32: importing TorchServe's BaseHandler turns
    it on ("high") for every model in the process, which the golden tolerance would not allow."""
    torch.set_float32_matmul_precision("high" if spec.serving.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = spec.serving.tf32


def _compiled_or_eager(model: nn.Module, model_dir: Path, device: torch.device) -> nn.Module:
    """torch.compile, exercised once on the golden batch; the eager model if that fails."""
    try:
        compiled = torch.compile(model)
        golden_error(compiled, model_dir, device)
        logger.info("serving the torch.compile'd model")
        return compiled
    except Exception as err:  # noqa: BLE001 - any compiler failure means: serve eagerly
        logger.warning("torch.compile failed (%s: %s); serving the eager model",
                       type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return model


def main(argv: list[str] | None = None) -> int:
    """`mar verify`'s fresh process: check an extracted archive; exit 1 on any failure."""
    model_dir = Path((argv or sys.argv[1:])[0]).resolve()
    import model_defs  # noqa: PLC0415 - must come from the archive, checked here

    if not Path(model_defs.__file__).resolve().is_relative_to(model_dir):
        print(f"verify: model_defs was imported from {model_defs.__file__}, not from the archive "
              f"{model_dir}; put the archive first on sys.path.", file=sys.stderr)
        return 1
    try:
        # Offline, check on whatever this host has: the archive, not the serving device, is tested.
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        checked = load_archive_model(model_dir, device=device)
    except (IntegrityError, ValueError, KeyError, TypeError) as err:
        print(f"verify: FAILED: {err}", file=sys.stderr)
        return 1
    info = read_build_info(model_dir)
    if sha256_file(model_dir / info.weights_file) != info.weights_sha256:  # the recorded sha256 too
        print(f"verify: FAILED: {info.weights_file} does not match its recorded sha256: the archive "
              "was altered after `mar build`. Rebuild it.", file=sys.stderr)
        return 1
    rtol, atol = tolerance(checked.spec.serving.precision)
    print(f"verify: OK: {checked.spec.name} {checked.spec.version}: build record matches; golden "
          f"max abs error {checked.golden_max_error:.3g} on {checked.device} "
          f"(tolerance rtol {rtol:g}, atol {atol:g}, {checked.spec.serving.precision})")
    return 0
