"""Everything a worker does before it serves, in order: check the build record, choose the device,
load the weights into the definition, lay the model out, compile it if asked, pass the golden check.

`mar verify` runs the same sequence offline (handlers/selfcheck.py), so an archive that verifies is
an archive whose workers start.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from handlers.construction import build_model
from handlers.device import apply_process_settings, prepare_model, select_device
from handlers.errors import IntegrityError
from handlers.hashing import blake3_file
from handlers.model_io import ModelIO
from handlers.precision import check_artifact_host, warn_if_emulated
from handlers.runtimes import ExportedModel, load_exported, runtime_named
from handlers.records import SPEC_FILE, BuildRecord, GoldenRecord
from handlers.spec import ModelSpec, load_spec
from handlers.worker_report import WorkerReport

__all__ = ["ArchiveModel", "load_archive_model", "worker_report"]

logger = logging.getLogger(__name__)


@dataclass
class ArchiveModel:
    spec: ModelSpec
    model: nn.Module
    model_io: ModelIO  # the model called with named inputs, its outputs named
    device: torch.device
    golden_max_error: float
    weights_bytes: int


def load_archive_model(model_dir: Path, *, gpu_id: int | str | None = None,
                       device: torch.device | None = None) -> ArchiveModel:
    """Load the archive extracted at `model_dir` on the device the spec and TorchServe's `gpu_id`
    select (or on `device`). Raises IntegrityError, WeightsError, SpecError or ArchitectureError,
    and RuntimeError for `device: gpu` without a usable GPU."""
    spec = load_spec(model_dir / SPEC_FILE)
    record = BuildRecord.read(model_dir)
    record.check_files(model_dir)
    target = (record.runtime or {}).get("target_device")
    device = device or _serving_device(spec, gpu_id, target)
    apply_process_settings(spec)
    if device.type == "cpu":
        warn_if_emulated(spec.serving.precision)
    golden = GoldenRecord.read(model_dir)
    if record.runtime is None:
        model = _eager_model(spec, model_dir, record, golden, device)
        model_io = ModelIO(spec, model)
    else:
        model = model_io = _exported_model(spec, model_dir, record, device)
    error = golden.check(model_io, device, model_dir)  # also the warm-up, at the largest batch
    return ArchiveModel(spec, model, model_io, device, error,
                        sum(entry.bytes for entry in record.weight_entries))


def _eager_model(spec: ModelSpec, model_dir: Path, record: BuildRecord, golden: GoldenRecord,
                 device: torch.device) -> nn.Module:
    loaded = build_model(spec, model_dir / record.weights.file, device=device,
                         expected_blake3={e.file: e.blake3 for e in record.weight_entries})
    model = prepare_model(loaded.model, spec)
    if spec.serving.compile:
        model = _compiled_or_eager(spec, model, golden, device)
    return model


def _exported_model(spec: ModelSpec, model_dir: Path, record: BuildRecord,
                    device: torch.device) -> ExportedModel:
    """The artifact, checked against its recorded BLAKE3 before anything loads it."""
    path = model_dir / record.weights.file
    runtime = runtime_named(spec.serving.runtime)
    if runtime.device_bound and device.type == "cpu":
        check_artifact_host(record.host, runtime.label, path.name)
    if blake3_file(path) != record.weights.blake3:
        raise IntegrityError(f"{path} does not match the archive's build record (BLAKE3): the "
                             "archive was altered after `mar build`. Rebuild it.")
    return load_exported(spec, path, device, target_device=record.runtime["target_device"])


def worker_report(loaded: ArchiveModel, *, resident_before: int, started: float) -> WorkerReport:
    """What loading cost this worker: its peak resident memory minus before, GPU memory, time."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    device = loaded.device
    return WorkerReport(
        event="ready", model=loaded.spec.name, version=loaded.spec.version, device=str(device),
        resident_growth_bytes=max(peak - resident_before, 0), weights_bytes=loaded.weights_bytes,
        gpu_allocated_bytes=torch.cuda.memory_allocated(device) if device.type == "cuda" else 0,
        precision=loaded.spec.serving.precision, golden_max_error=loaded.golden_max_error,
        load_seconds=round(time.perf_counter() - started, 4))


def _serving_device(spec: ModelSpec, gpu_id: int | str | None,
                    artifact_target: str | None) -> torch.device:
    runtime = runtime_named(spec.serving.runtime)
    if artifact_target == "cpu" and spec.serving.device == "auto" and runtime.device_bound:
        logger.info("the %s artifact was compiled for the CPU: serving on the CPU", runtime.label)
        return torch.device("cpu")
    device = select_device(spec.serving.device, gpu_id)
    if device.type == "cpu" and spec.serving.device == "auto":
        logger.info("serving.device is auto and %s: serving on the CPU",
                    "CUDA is not available" if not torch.cuda.is_available()
                    else "TorchServe assigned no GPU to this worker")
    return device


def _compiled_or_eager(spec: ModelSpec, model: nn.Module, golden: GoldenRecord,
                       device: torch.device) -> nn.Module:
    """torch.compile, exercised once on the golden batches; the eager model if that fails."""
    try:
        compiled = torch.compile(model)
        golden.run(ModelIO(spec, compiled), device)
        logger.info("serving the torch.compile'd model")
        return compiled
    except Exception as err:  # noqa: BLE001 - any compiler failure means: serve eagerly
        logger.warning("torch.compile failed (%s: %s); serving the eager model",
                       type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return model
