"""The files `mar build` writes into every archive to prove what it built, each with one owner
that writes it, reads it, checks its format version and holds its checks:

    build-info.json   BuildRecord: sha256 of every packaged file (and BLAKE3 of the weights, for
                      the fast check at every worker start), git state, torch version, load notes
    golden.pt         GoldenRecord: seeded inputs (handlers/golden_inputs.py) and the outputs the
                      eval-mode model gave at build, with the tolerance of the spec's precision
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from handlers.errors import IntegrityError
from handlers.hashing import sha256_file

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = ["FILES_DIR", "SPEC_FILE", "MODEL_CONFIG_FILE", "BUILD_RECORD_FILE", "GOLDEN_FILE", "BuildRecord",
           "WeightsEntry", "GoldenRecord", "GoldenComparison"]

SPEC_FILE = "spec.yaml"
MODEL_CONFIG_FILE = "model-config.yaml"
BUILD_RECORD_FILE = "build-info.json"
GOLDEN_FILE = "golden.pt"
FILES_DIR = "files"  # the spec's `files` and tokenizer, under their relative paths


def _check_format(found: Any, supported: int, where: str) -> None:
    if not isinstance(found, int) or found > supported:
        raise IntegrityError(f"{where} has format {found!r}; this handler reads format "
                             f"{supported} or older. Rebuild the archive with this repository's "
                             "`mar build`, or serve it with the version that built it.")


# ---- build-info.json ----

@dataclass(frozen=True)
class WeightsEntry:
    file: str  # its name in the archive
    bytes: int
    sha256: str  # for the record and `mar verify`
    blake3: str  # for the check at every worker start: ~4x faster than sha256 here


@dataclass(frozen=True)
class BuildRecord:
    FORMAT: ClassVar[int] = 4  # 4: precision, host; 3: shards; 2: runtime; older read as they are

    model: dict[str, str]  # name, version, arch
    weights: WeightsEntry  # the file spec.yaml names: the checkpoint, a shard index, an artifact
    files: dict[str, str]  # archive name -> sha256, for every packaged file but the weights
    source: dict[str, Any] | None  # git commit and uncommitted changes; None outside git
    torch_version: str
    checkpoint: dict[str, list[str]]  # normalised, let_through_missing, ignored_unexpected
    golden: dict[str, Any]  # file, precision, batch_size
    # eager: None. An exported runtime: {"name", "target_device", "eager_weights_sha256"}; then
    # `weights` is the exported artifact, which holds the weights.
    runtime: dict[str, Any] | None = None
    shards: list[WeightsEntry] = field(default_factory=list)  # a sharded checkpoint's shards
    # reduced precision: {"dtype", "mode", "calibration" (where from), "gate" (figures, bars)}
    precision: dict[str, Any] | None = None
    host: dict[str, Any] | None = None  # the build host's instruction sets (handlers/precision.py)

    @property
    def weight_entries(self) -> list[WeightsEntry]:
        """Every file of the weights: the one spec.yaml names, then any shards."""
        return [self.weights, *self.shards]

    def to_bytes(self) -> bytes:
        data = {"format": self.FORMAT, **asdict(self)}
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def read(cls, model_dir: Path) -> "BuildRecord":
        """The record of an extracted archive. Raises IntegrityError."""
        path = model_dir / BUILD_RECORD_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{model_dir} has no {BUILD_RECORD_FILE}: it was not built by "
                                 "`mar build` (or the file was removed). Rebuild it with "
                                 "`mar build SPEC`.") from None
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> "BuildRecord":
        """A record from its bytes; `where` names them in messages. Raises IntegrityError."""
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise IntegrityError(f"{where} is not valid JSON ({err}): the archive was altered "
                                 "after `mar build`. Rebuild it.") from None
        _check_format(data.pop("format", None), cls.FORMAT, where)
        return cls(**{**data, "weights": WeightsEntry(**data["weights"]),
                      "shards": [WeightsEntry(**shard) for shard in data.get("shards", [])]})

    def differences(self, digests: dict[str, str]) -> list[str]:
        """What sets an archive's files apart from this record, given the sha256 of every file
        of it by name: files changed or missing, and files the record does not list."""
        expected = {**self.files, **{entry.file: entry.sha256 for entry in self.weight_entries}}
        changed = [f"{name} {'differs' if name in digests else 'is missing'}"
                   for name, digest in sorted(expected.items()) if digests.get(name) != digest]
        unlisted = [f"{name} is not in the record"
                    for name in sorted(set(digests) - set(expected) - {BUILD_RECORD_FILE})]
        return changed + unlisted

    def check_files(self, model_dir: Path) -> None:
        """Every packaged file but the weights (hashed while loading) matches the record."""
        altered = sorted(name for name, digest in self.files.items()
                         if not (model_dir / name).is_file()
                         or sha256_file(model_dir / name) != digest)
        if altered:
            raise IntegrityError(f"{model_dir}: {', '.join(altered)} differ from the archive's "
                                 "build record: the archive was altered after `mar build`. "
                                 "Rebuild it.")

    def check_weights_sha256(self, model_dir: Path) -> None:
        """The weights against their recorded sha256 (workers check the faster BLAKE3)."""
        for entry in self.weight_entries:
            if sha256_file(model_dir / entry.file) != entry.sha256:
                raise IntegrityError(f"{entry.file} does not match its recorded sha256: the "
                                     "archive was altered after `mar build`. Rebuild it.")


# ---- golden.pt ----

Tensors = dict[str, "Tensor | list[Tensor]"]  # a list: per sample (batching: list, per_sample)


def _each(value, work):
    """`work` on a tensor, or on each tensor of a per-sample list."""
    return [work(v) for v in value] if isinstance(value, list) else work(value)


def _numel(value) -> int:
    return sum(_numel(v) for v in value) if isinstance(value, list) else value.numel()


@dataclass(frozen=True)
class GoldenComparison:
    max_error: float  # largest absolute difference over every output; inf when a shape differs
    within: bool  # within the record's tolerance
    errors: dict[str, float] = field(default_factory=dict)  # per output

    def describe(self) -> str:
        return ", ".join(f"{name} {error:.3g}" for name, error in self.errors.items())


@dataclass(frozen=True)
class GoldenRecord:
    """Inputs and the outputs the model gave at build, in cases: one batch per length of the
    dynamic dimensions, and for a model with an attention mask one batch of mixed lengths padded
    as the handler pads them. An input or output of a per-sample model is a list of tensors,
    one per sample, each of its own size (an image with no detections: a [0, 4] tensor)."""
    FORMAT: ClassVar[int] = 3  # 3: per-sample lists; 2: cases; 1: one tensor each way

    cases: list[tuple[Tensors, Tensors]]  # (inputs, outputs) per case
    rtol: float
    atol: float

    @classmethod
    def tolerance(cls, precision: str) -> tuple[float, float]:
        """(rtol, atol) of the golden check at `precision` (handlers/precision.py)."""
        from handlers.precision import precision_named

        return precision_named(precision).golden

    @classmethod
    def record(cls, model_io: Callable[[Tensors], Tensors], inputs: list[Tensors],
               precision: str) -> "GoldenRecord":
        """Run each case's inputs through the eval-mode model and keep what it gave."""
        rtol, atol = cls.tolerance(precision)
        return cls([(case, {k: _each(v, lambda t: t.clone()) for k, v in model_io(case).items()})
                    for case in inputs], rtol, atol)

    @property
    def largest_case(self) -> tuple[Tensors, Tensors]:
        """The case whose inputs have the most elements: the warm-up that matters."""
        return max(self.cases, key=lambda case: sum(_numel(t) for t in case[0].values()))

    @property
    def largest_inputs(self) -> Tensors:
        return self.largest_case[0]

    def to_bytes(self) -> bytes:
        import torch

        buffer = io.BytesIO()
        torch.save({"format": self.FORMAT, "rtol": self.rtol, "atol": self.atol,
                    "cases": [{"inputs": i, "outputs": o} for i, o in self.cases]}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = GOLDEN_FILE) -> "GoldenRecord":
        import torch

        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        _check_format(saved.get("format", 1), cls.FORMAT, where)
        if "cases" not in saved:  # format 1: one tensor in, one tensor out
            cases = [({"input": saved["inputs"]}, {"output": saved["outputs"]})]
        else:
            cases = [(case["inputs"], case["outputs"]) for case in saved["cases"]]
        return cls(cases, float(saved["rtol"]), float(saved["atol"]))

    @classmethod
    def read(cls, model_dir: Path) -> "GoldenRecord":
        return cls.from_bytes((model_dir / GOLDEN_FILE).read_bytes(), str(model_dir / GOLDEN_FILE))

    def compare(self, outputs: list[Tensors]) -> GoldenComparison:
        """How far `outputs` (one mapping per case) are from the recorded ones, sample by sample
        for per-sample outputs."""
        errors, within = {}, True
        for got, (_, expected) in zip(outputs, self.cases):
            for name, want in expected.items():
                error, close = self._difference(got.get(name), want)
                errors[name] = max(errors.get(name, 0.0), error)
                within &= close
        return GoldenComparison(max(errors.values(), default=0.0), within, errors)

    def _difference(self, have, want) -> tuple[float, bool]:
        """(max abs error, within tolerance) of one output; inf when a shape or count differs."""
        import torch

        if isinstance(want, list):
            if not isinstance(have, list) or len(have) != len(want):
                return float("inf"), False
            pairs = [self._difference(h, w) for h, w in zip(have, want)]
            return max((e for e, _ in pairs), default=0.0), all(ok for _, ok in pairs)
        if not isinstance(have, torch.Tensor) or have.shape != want.shape:
            return float("inf"), False
        have, want = have.float().cpu(), want.float()
        error = float((have - want).abs().max()) if want.numel() else 0.0
        return error, bool(torch.allclose(have, want, rtol=self.rtol, atol=self.atol))

    def run(self, model_io: Callable[[Tensors], Tensors], device: torch.device) -> GoldenComparison:
        """Run the recorded inputs through the model on `device` and compare."""
        return self.compare([model_io({k: _each(v, lambda t: t.to(device))
                                       for k, v in inputs.items()})
                             for inputs, _ in self.cases])

    def check(self, model_io: Callable[[Tensors], Tensors], device: torch.device,
              where: Path) -> float:
        """The golden check; returns the max abs error, raises IntegrityError beyond tolerance."""
        result = self.run(model_io, device)
        if not result.within:
            raise IntegrityError(
                f"golden check failed in {where}: outputs differ from those recorded at build by up "
                f"to {result.max_error:.3g} ({result.describe()}), beyond the tolerance for this "
                "precision. The definition, weights or torch version changed how the model "
                "computes; rebuild and compare with `mar verify`.")
        return result.max_error
