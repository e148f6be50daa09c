"""Serving precisions, one table entry each, and what a worker checks about its host before it
serves one. Adding a precision touches its entry only.

    fp32   the model as trained
    fp16   half precision: GPUs run it natively; a CPU emulates it
    bf16   bfloat16: CPUs with AMX or AVX512_BF16 units (and Ampere+ GPUs) run it natively
    int8   8-bit integers: `static` (activation ranges calibrated at build, then compiled by
           AOTInductor or ONNX Runtime: convolutional models) or `dynamic` (Linear and LSTM
           weights int8, activations quantized per batch, eager: text and audio models)

A reduced precision is judged once, at build, against fp32 eager (scripts/precision/gate.py); the
golden record then holds the reduced model's own outputs, and a worker must reproduce them within
the entry's tight tolerance. The build records the instruction sets it saw (`host_isa`); a worker
refuses an AOTInductor artifact compiled for units its host lacks, and warns once when bf16 would
be emulated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.errors import IntegrityError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Precision", "PRECISIONS", "INT8_MODES", "GATE_METRICS", "SampleSet",
           "PrecisionSettings", "parse_precision", "precision_key", "precision_named", "host_isa",
           "check_artifact_host", "runs_natively", "warn_if_emulated", "dynamic_int8"]

logger = logging.getLogger(__name__)

INT8_MODES = ("static", "dynamic")
# The accuracy gate's figures (scripts/precision/gate.py): agreements must reach the bar, errors
# stay under it.
GATE_METRICS = {"top1_agreement": "min", "topk_overlap": "min", "max_rel_error": "max",
                "mean_rel_error": "max"}
# /proc/cpuinfo flags that matter to reduced precision, and that compiled code may use
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
_CAPABILITY_RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: str  # the torch dtype floating tensors run in (int8: float32 around the int8 ops)
    golden: tuple[float, float]  # (rtol, atol): a worker reproducing the recorded outputs
    accept: dict[str, float] = field(default_factory=dict)  # the default gate against fp32
    cpu_units: tuple[str, ...] = ()  # flags of CPUs that run it natively (any one of them)


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    # fp32 allows for another device or thread count
    Precision("fp32", "float32", (1e-4, 1e-4)),
    Precision("fp16", "float16", (1e-2, 1e-2), {"top1_agreement": 0.99, "mean_rel_error": 0.01}),
    Precision("bf16", "bfloat16", (2e-2, 2e-2), {"top1_agreement": 0.99, "mean_rel_error": 0.05},
              cpu_units=("amx_bf16", "avx512_bf16")),
    # AVX2 multiplies int8 pairs (vpmaddubsw) without VNNI's fused add: ONNX Runtime's and
    # oneDNN's int8 kernels use it (ResNet-18 static int8 2.3x fp32 eager on an AVX2-only EPYC)
    Precision("int8", "float32", (2e-2, 2e-2), {"top1_agreement": 0.98, "mean_rel_error": 0.1},
              cpu_units=("amx_int8", "avx512_vnni", "avx2")),
)}


def precision_named(name: str) -> Precision:
    return PRECISIONS[name]


# ---- the spec's serving.precision ----

@dataclass(frozen=True)
class SampleSet:
    """Request samples in a folder beside the spec: images, .npy arrays (a sample each) or .json
    request values, decoded and preprocessed as requests are."""
    files: str
    count: int | None = None  # at most this many, in file-name order


@dataclass(frozen=True)
class PrecisionSettings:
    mode: str | None = None  # int8: static or dynamic
    calibration: SampleSet | None = None  # int8 static: what calibrates the activation ranges
    evaluation: SampleSet | None = None  # the accuracy gate's samples (default: calibration's)
    accept: dict[str, float] = field(default_factory=dict)  # the gate's bars, over the defaults

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mode": self.mode} if self.mode else {}
        for key in ("calibration", "evaluation"):
            if getattr(self, key) is not None:
                data[key] = {k: v for k, v in vars(getattr(self, key)).items() if v is not None}
        return {**data, **({"accept": dict(self.accept)} if self.accept else {})}


def precision_key(name: str, settings: PrecisionSettings) -> str:
    """How runtimes name what they refuse: the precision, and int8's mode."""
    return f"int8 {settings.mode}" if name == "int8" else name


def parse_precision(value: Any, runtime: str, problems: list[str]) -> tuple[str, PrecisionSettings]:
    """`serving.precision`: a name, or {dtype, mode, calibration, evaluation, accept}; every
    problem appended to `problems`. int8's mode defaults to dynamic on the eager runtime and to
    static on a compiled one."""
    if isinstance(value, dict):
        allowed = ("dtype", "mode", "calibration", "evaluation", "accept")
        problems += [f"unknown key `serving.precision.{k}` (allowed: {', '.join(allowed)})"
                     for k in sorted(set(value) - set(allowed), key=str)]
        name, raw = value.get("dtype", "fp32"), value
    else:
        name, raw = value, {}
    if name not in PRECISIONS:
        problems.append(f"`serving.precision` {name!r} is not one of {', '.join(PRECISIONS)}")
        return "fp32", PrecisionSettings()
    mode = raw.get("mode", ("dynamic" if runtime == "eager" else "static") if name == "int8"
                   else None)
    if mode is not None and (name != "int8" or mode not in INT8_MODES):
        problems.append(f"`serving.precision.mode` {mode!r} applies to int8 only, as one of "
                        f"{', '.join(INT8_MODES)}")
        mode = None
    calibration = _sample_set(raw.get("calibration"), "calibration", problems)
    if calibration is not None and mode != "static":
        problems.append("`serving.precision.calibration` calibrates static int8 only; drop it, or "
                        "set dtype: int8, mode: static")
    return name, PrecisionSettings(mode, calibration,
                                   _sample_set(raw.get("evaluation"), "evaluation", problems),
                                   _accept(raw.get("accept", {}), problems))


def _sample_set(value: Any, key: str, problems: list[str]) -> SampleSet | None:
    if value is None:
        return None
    files, count = (value.get("files"), value.get("count")) if isinstance(value, dict) else (None, None)
    if not (isinstance(files, str) and files and not files.startswith("/") and ".." not in
            Path(files).parts) or (count is not None and not (isinstance(count, int) and count > 0)):
        problems.append(f"`serving.precision.{key}` {value!r} must be {{files: FOLDER beside the "
                        f"spec, count: N}}, e.g. {{files: {key}/, count: 64}}")
        return None
    return SampleSet(files, count)


def _accept(value: Any, problems: list[str]) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
            k in GATE_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in value.items()):
        problems.append(f"`serving.precision.accept` {value!r} must map gate figures "
                        f"({', '.join(GATE_METRICS)}) to bars, e.g. {{top1_agreement: 0.99}}")
        return {}
    return {k: float(v) for k, v in value.items()}


def host_isa() -> dict:
    """What this host's CPU runs, as torch will use it: its kernel capability (which
    ATEN_CPU_CAPABILITY lowers) and the flags that matter here (those above the capability
    dropped)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    try:
        flags = set(next(line.split(":", 1)[1].split() for line in
                         Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")))
    except (OSError, StopIteration):
        flags = set()
    if _CAPABILITY_RANK.get(capability, 0) < _CAPABILITY_RANK["AVX512"]:
        flags = {f for f in flags if not f.startswith(("avx512", "amx"))}
    return {"cpu_capability": capability, "flags": sorted(flags & set(_ISA_FLAGS))}


def check_artifact_host(built_on: dict | None, runtime_label: str, where: str) -> None:
    """Refuse a compiled artifact whose build host had instruction sets this host lacks: its
    code would stop on an illegal instruction. Raises IntegrityError naming them."""
    if not built_on:
        return
    here = host_isa()
    lower = _CAPABILITY_RANK.get(here["cpu_capability"], 0) < \
        _CAPABILITY_RANK.get(built_on.get("cpu_capability"), 0)
    missing = sorted(set(built_on.get("flags", [])) - set(here["flags"]))
    if lower or missing:
        raise IntegrityError(
            f"{where} was compiled by {runtime_label} on a CPU with "
            f"{built_on.get('cpu_capability')} ({', '.join(built_on.get('flags', []))}); this "
            f"host has {here['cpu_capability']}" + (f", without {', '.join(missing)}" if missing
                                                    else "") +
            ". Its code would stop on an illegal instruction here. Rebuild it on this host type "
            "(`mar build` on one), or serve it with runtime eager or onnx.")


_warned: set[str] = set()


def runs_natively(precision: str) -> bool:
    """Whether this host's CPU has units for `precision` (fp32 and fp16 need none named)."""
    units = PRECISIONS[precision].cpu_units
    return not units or bool(set(units) & set(host_isa()["flags"]))


def warn_if_emulated(precision: str) -> str | None:
    """Once per process: a precision this CPU has no units for runs emulated, slower than fp32.
    Returns the warning (None when the host runs it natively)."""
    units = PRECISIONS[precision].cpu_units
    if runs_natively(precision) or precision in _warned:
        return None
    _warned.add(precision)
    message = (f"{precision} is emulated on this CPU (it has none of {', '.join(units)}): expect "
               f"it slower than fp32. Serve fp32 here, or a host with those units "
               f"(`lscpu | grep -o 'amx[a-z_0-9]*\\|avx512_[a-z0-9]*'`).")
    logger.warning(message)
    return message


def dynamic_int8(model: nn.Module) -> nn.Module:
    """Linear and LSTM layers with int8 weights, their activations quantized per batch (torch's
    dynamic quantization, which the archive's worker can run with torch alone: torchao, which
    torch 2.13 points to instead, is not in a serving environment); everything else as it was.

    nn.TransformerEncoderLayer's fast path reads `linear1.weight` as a tensor, which a quantized
    Linear has as a method: the fast path is turned off for the process (a worker serves one
    model), and the layer calls its Linear modules instead."""
    import torch
    from torch import nn

    torch.backends.mha.set_fastpath_enabled(False)
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
