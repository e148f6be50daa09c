"""`mar build`: validate a spec and its weights, then package a self-contained, reproducible archive.

Validation is the worker's own loading code (handlers/construction.py) followed by the golden batch
through the eval-mode model; only a model that passes is packaged, so a failed build writes nothing
and leaves any existing archive of the same name untouched (the new one replaces it atomically).
"""

from __future__ import annotations

import subprocess
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from handlers.construction import LoadedModel, build_model
from handlers.errors import MarError, SpecError, UsageError
from handlers.hashing import blake3_file, sha256_and_crc32, sha256_bytes, sha256_file
from handlers.device import prepare_model
from handlers.model_io import ModelIO
from handlers.precision import host_isa
from handlers.runtimes import runtime_named
from handlers.shards import resolve_weights, weight_files
from handlers.records import (BUILD_RECORD_FILE, FILES_DIR, GOLDEN_FILE, MODEL_CONFIG_FILE, SPEC_FILE,
                              BuildRecord, GoldenRecord, WeightsEntry)
from handlers.golden_inputs import golden_inputs
from handlers.spec import ModelSpec, load_spec, spec_to_dict
from model_defs import definition_files
from scripts.archive import MANIFEST_NAME, Member, archive_path, manifest_json, write_archive
from scripts.config import REPO_ROOT
from scripts.export import ExportedArtifact, export_artifact
from scripts.precision import GateResult, calibration_batches, judge_precision

__all__ = ["BuildResult", "build_archive", "validate", "HANDLER_FILE", "HANDLERS_DIR"]

HANDLER_FILE = REPO_ROOT / "handlers" / "model_handler.py"
HANDLERS_DIR = HANDLER_FILE.parent  # every module of the handlers package travels in the archive


@dataclass(frozen=True)
class BuildResult:
    archive: Path
    archive_sha256: str | None  # None for the folder format
    spec: ModelSpec
    weights: Path
    weights_sha256: str
    parameters: int
    golden: GoldenRecord
    checkpoint_notes: list[str]
    let_through_missing: tuple[str, ...]
    ignored_unexpected: tuple[str, ...]
    exported: ExportedArtifact | None = None  # the runtime's artifact, when not eager
    gate: GateResult | None = None  # a reduced precision's accuracy against fp32 eager
    calibration: str | None = None  # static int8: what it was calibrated on


def build_archive(spec_path: str | Path, *, export_path: str | Path, weights: str | Path | None = None,
                  archive_format: str = "mar") -> BuildResult:
    """Validate `spec_path` with its weights and write `<export_path>/<name>-<version>.mar` (or
    the folder `<export_path>/<name>-<version>` for archive_format="folder").

    Raises MarError (SpecError, WeightsError, ArchitectureError among them) with the cause and fix.
    """
    spec = load_spec(spec_path)
    weights_path = resolve_weights(Path(weights).resolve() if weights else
                                   spec.weights_path(REPO_ROOT))
    if not weights_path.is_file():
        raise UsageError(f"--weights {weights_path} is not a file. Pass the state_dict file, a "
                         "shard index, or a folder holding one.")
    export_dir = Path(export_path).resolve()
    target = archive_path(export_dir, spec.name, spec.version, archive_format)
    with tempfile.TemporaryDirectory(prefix="mar-export-") as scratch, \
            ThreadPoolExecutor(max_workers=2) as pool:
        # The weights (every shard) are hashed on the other core while they are validated and
        # copied; the build record that needs the digests is written last.
        digests = {path: pool.submit(sha256_and_crc32, path) for path in weight_files(weights_path)}
        loaded, golden = validate(spec, weights_path)
        calibration, calibrated_on = calibration_batches(spec) if _static_int8(spec) else (None, None)
        exported = export_artifact(spec, prepare_model(loaded.model, spec), golden, Path(scratch),
                                   calibration=calibration) \
            if runtime_named(spec.serving.runtime).exported else None
        golden = exported.golden if exported is not None and exported.golden else golden
        gate = judge_precision(spec, weights_path, prepare_model(loaded.model, spec),
                               exported.path if exported else None) \
            if spec.serving.precision != "fp32" else None
        served = {exported.path: pool.submit(sha256_and_crc32, exported.path)} if exported \
            else digests
        precision = None if gate is None else {
            "dtype": spec.serving.precision, "mode": spec.serving.precision_settings.mode,
            "calibration": calibrated_on, "gate": gate.to_record()}
        members = _members(spec, served, digests[weights_path], exported, loaded, golden, precision)
        export_dir.mkdir(parents=True, exist_ok=True)
        archive_sha256 = write_archive(target, members, archive_format=archive_format,
                                       crcs={path: d.result().crc32 for path, d in served.items()})
        return BuildResult(
            archive=target, archive_sha256=archive_sha256, spec=spec, weights=weights_path,
            weights_sha256=digests[weights_path].result().sha256,
            parameters=sum(p.numel() for p in loaded.model.parameters()),
            golden=golden, checkpoint_notes=loaded.checkpoint_notes,
            let_through_missing=loaded.plan.let_through_missing,
            ignored_unexpected=loaded.plan.ignored_unexpected, exported=exported, gate=gate,
            calibration=calibrated_on)


def validate(spec: ModelSpec, weights_path: Path) -> tuple[LoadedModel, GoldenRecord]:
    """Load the weights exactly as a worker will, then record the golden batches (seeded, the
    spec's largest batch, each length of the dynamic dimensions) on the CPU. Raises MarError when
    the forward pass fails or returns what the spec's `outputs` do not name."""
    loaded = build_model(spec, weights_path, device=torch.device("cpu"))
    model_io = ModelIO(spec, loaded.model)
    cases = golden_inputs(spec)
    try:
        return loaded, GoldenRecord.record(model_io, cases, spec.serving.precision)
    except MarError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here is the model's, reported whole
        shapes = ", ".join(f"{name} {list(t.shape)} ({str(t.dtype).removeprefix('torch.')})"
                           for name, t in cases[-1].items())
        raise SpecError(f"{spec.source}: forward pass on inputs {shapes} failed: "
                       f"{type(err).__name__}: {err}. Check the inputs' `shape` (without the "
                       "batch dimension) and `params`.") from None


def _members(spec: ModelSpec, served: dict[Path, Future], weights_digest: Future,
             exported: ExportedArtifact | None, loaded: LoadedModel, golden: GoldenRecord,
             precision: dict | None) -> dict[str, Member]:
    """Every file of the archive (name -> source): the checkpoint (or its index and shards, as
    they are), or the runtime's artifact in its place. The build record is deferred: it needs
    the served files' digests, which are computed while the rest is written."""
    members: dict[str, Member] = {HANDLER_FILE.name: HANDLER_FILE}
    for source in sorted(HANDLERS_DIR.rglob("*.py")):
        if source != HANDLER_FILE:
            members[f"handlers/{source.relative_to(HANDLERS_DIR).as_posix()}"] = source
    package_dir = REPO_ROOT / "model_defs"
    for source in definition_files(spec.arch, spec.processor):
        members[f"model_defs/{source.relative_to(package_dir).as_posix()}"] = source
    for relative, source in _spec_files(spec).items():
        members[f"{FILES_DIR}/{relative}"] = source
    entry = next(iter(served))
    for path in served:
        if path.name in members or path.name in (SPEC_FILE, MODEL_CONFIG_FILE, BUILD_RECORD_FILE,
                                                 GOLDEN_FILE):
            raise SpecError(f"weights file name {path.name!r} collides with a file the archive "
                            "needs. Rename the weights file.")
    members[SPEC_FILE] = yaml.safe_dump(spec_to_dict(spec, weights=entry.name),
                                        sort_keys=False).encode()
    members[MODEL_CONFIG_FILE] = yaml.safe_dump(spec.serving.model_config(), sort_keys=False).encode()
    members[GOLDEN_FILE] = golden.to_bytes()
    members[MANIFEST_NAME] = manifest_json(name=spec.name, version=spec.version,
                                           handler=HANDLER_FILE.name, weights=entry.name,
                                           config_file=MODEL_CONFIG_FILE)
    files = {name: _sha256(source) for name, source in sorted(members.items())}
    members.update({path.name: path for path in served})

    def weights_entry(path: Path) -> WeightsEntry:
        return WeightsEntry(file=path.name, bytes=path.stat().st_size,
                            sha256=served[path].result().sha256, blake3=blake3_file(path))

    members[BUILD_RECORD_FILE] = lambda: BuildRecord(
        model={"name": spec.name, "version": spec.version, "arch": spec.arch},
        weights=weights_entry(entry), shards=[weights_entry(p) for p in list(served)[1:]],
        files=files, source=_git_state(), torch_version=torch.__version__,
        checkpoint={"normalised": loaded.checkpoint_notes,
                    "let_through_missing": list(loaded.plan.let_through_missing),
                    "ignored_unexpected": list(loaded.plan.ignored_unexpected)},
        golden={"file": GOLDEN_FILE, "precision": spec.serving.precision,
                "batch_size": spec.serving.batch_size},
        runtime=None if exported is None else {
            "name": spec.serving.runtime, "target_device": exported.target_device,
            "eager_weights_sha256": weights_digest.result().sha256,
            "max_abs_error_vs_eager": exported.max_error},
        precision=precision, host=host_isa(),
    ).to_bytes()
    return members


def _static_int8(spec: ModelSpec) -> bool:
    return spec.serving.precision == "int8" and spec.serving.precision_settings.mode == "static"


def _spec_files(spec: ModelSpec) -> dict[str, Path]:
    """The files the spec names (`files`, the tokenizer), relative to its folder. Raises MarError
    for one that is not there."""
    names = [*spec.files, *([spec.io.tokenizer.file] if spec.io.tokenizer else [])]
    found = {}
    for name in names:
        path = spec.source.parent / name
        if not path.is_file():
            raise SpecError(f"{spec.source}: {name!r} (in `files` or `tokenizer.file`) is not a file "
                           f"at {path}. Put it beside the spec, or fix the path.")
        found[Path(name).as_posix()] = path
    return found


def _sha256(source: Path | bytes) -> str:
    return sha256_bytes(source) if isinstance(source, bytes) else sha256_file(source)


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
