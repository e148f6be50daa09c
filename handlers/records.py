"""The files `mar build` writes into every archive to prove what it built, each with one owner
that writes it, reads it, checks its format version and holds its checks:

    build-info.json   BuildRecord: sha256 of every packaged file (and BLAKE3 of the weights, for
                      the fast check at every worker start), git state, torch version, load notes
    golden.pt         GoldenRecord: seeded inputs and the outputs the eval-mode model gave at build,
                      with the tolerance of the spec's precision
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from handlers.device import input_dtype
from handlers.errors import IntegrityError
from handlers.hashing import sha256_file
from handlers.spec import ModelSpec

__all__ = ["SPEC_FILE", "MODEL_CONFIG_FILE", "BUILD_RECORD_FILE", "GOLDEN_FILE", "BuildRecord",
           "WeightsEntry", "GoldenRecord", "GoldenComparison", "example_input"]

SPEC_FILE = "spec.yaml"
MODEL_CONFIG_FILE = "model-config.yaml"
BUILD_RECORD_FILE = "build-info.json"
GOLDEN_FILE = "golden.pt"


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
    FORMAT: ClassVar[int] = 1

    model: dict[str, str]  # name, version, arch
    weights: WeightsEntry
    files: dict[str, str]  # archive name -> sha256, for every packaged file but the weights
    source: dict[str, Any] | None  # git commit and uncommitted changes; None outside git
    torch_version: str
    checkpoint: dict[str, list[str]]  # normalised, let_through_missing, ignored_unexpected
    golden: dict[str, Any]  # file, precision, batch_size

    def to_bytes(self) -> bytes:
        data = {"format": self.FORMAT, **asdict(self)}
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def read(cls, model_dir: Path) -> "BuildRecord":
        """The record of an extracted archive. Raises IntegrityError."""
        path = model_dir / BUILD_RECORD_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise IntegrityError(f"{model_dir} has no {BUILD_RECORD_FILE}: it was not built by "
                                 "`mar build` (or the file was removed). Rebuild it with "
                                 "`mar build SPEC`.") from None
        except ValueError as err:
            raise IntegrityError(f"{path} is not valid JSON ({err}): the archive was altered "
                                 "after `mar build`. Rebuild it.") from None
        _check_format(data.pop("format", None), cls.FORMAT, str(path))
        return cls(**{**data, "weights": WeightsEntry(**data["weights"])})

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
        if sha256_file(model_dir / self.weights.file) != self.weights.sha256:
            raise IntegrityError(f"{self.weights.file} does not match its recorded sha256: the "
                                 "archive was altered after `mar build`. Rebuild it.")


# ---- golden.pt ----

@dataclass(frozen=True)
class GoldenComparison:
    max_error: float  # largest absolute difference; inf when the shapes differ
    within: bool  # within the record's tolerance


@dataclass(frozen=True)
class GoldenRecord:
    FORMAT: ClassVar[int] = 1
    # (rtol, atol) by precision: fp32 allows for another device or thread count; fp16/bf16 for
    # their 11- and 8-bit mantissas.
    TOLERANCES: ClassVar[dict[str, tuple[float, float]]] = {
        "fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}

    inputs: Tensor
    outputs: Tensor
    rtol: float
    atol: float

    @classmethod
    def tolerance(cls, precision: str) -> tuple[float, float]:
        """(rtol, atol) of the golden check at `precision`."""
        return cls.TOLERANCES[precision]

    @classmethod
    def record(cls, model: nn.Module, inputs: Tensor, precision: str) -> "GoldenRecord":
        """Run `inputs` through the eval-mode `model` and keep what it gave."""
        with torch.inference_mode():
            outputs = model(inputs)
        rtol, atol = cls.tolerance(precision)
        return cls(inputs, outputs.clone(), rtol, atol)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({"format": self.FORMAT, "inputs": self.inputs, "outputs": self.outputs,
                    "rtol": self.rtol, "atol": self.atol}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = GOLDEN_FILE) -> "GoldenRecord":
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        _check_format(saved.get("format", 1), cls.FORMAT, where)
        return cls(saved["inputs"], saved["outputs"], float(saved["rtol"]), float(saved["atol"]))

    @classmethod
    def read(cls, model_dir: Path) -> "GoldenRecord":
        return cls.from_bytes((model_dir / GOLDEN_FILE).read_bytes(), str(model_dir / GOLDEN_FILE))

    def compare(self, outputs: Tensor) -> GoldenComparison:
        """How far `outputs` are from the recorded ones, and whether that is within tolerance."""
        outputs, expected = outputs.float().cpu(), self.outputs.float()
        if outputs.shape != expected.shape:
            return GoldenComparison(float("inf"), False)
        error = float((outputs - expected).abs().max())
        return GoldenComparison(error, bool(torch.allclose(outputs, expected, rtol=self.rtol,
                                                           atol=self.atol)))

    def run(self, model: nn.Module, device: torch.device) -> GoldenComparison:
        """Run the recorded inputs through `model` on `device` and compare."""
        with torch.inference_mode():
            return self.compare(model(self.inputs.to(device)))

    def check(self, model: nn.Module, device: torch.device, where: Path) -> float:
        """The golden check; returns the max abs error, raises IntegrityError beyond tolerance."""
        result = self.run(model, device)
        if not result.within:
            raise IntegrityError(
                f"golden check failed in {where}: outputs differ from those recorded at build by up "
                f"to {result.max_error:.3g}, beyond the tolerance for this precision. The "
                "definition, weights or torch version changed how the model computes; rebuild and "
                "compare with `mar verify`.")
        return result.max_error


def example_input(spec: ModelSpec, batch_size: int, *, device: torch.device) -> Tensor:
    """A seeded input batch of the spec's shape and dtype: the golden inputs."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, *spec.input.shape)
    dtype = input_dtype(spec)
    if dtype.is_floating_point:
        sample = torch.rand(shape, generator=generator, dtype=torch.float32).to(dtype)
    else:
        sample = torch.randint(0, 2, shape, generator=generator, dtype=dtype)
    return sample.to(device)
