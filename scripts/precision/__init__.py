"""Reduced precision at build (handlers/precision.py says what each precision is):

    samples.py    calibration and evaluation samples, decoded and batched as requests are
    quantize.py   static int8 for the compiled runtimes (pt2e + AOTInductor, ONNX Runtime QDQ)
    gate.py       the accuracy gate against fp32 eager

`judge_precision` runs the gate on what will be served: the eager model at its precision (bf16,
dynamic int8), or the exported artifact as a worker runs it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from handlers.construction import build_model
from handlers.model_io import ModelIO
from handlers.precision import PrecisionSettings
from handlers.spec import ModelSpec
from scripts.precision.gate import GateResult, judge
from scripts.precision.samples import sample_batches

__all__ = ["judge_precision", "calibration_batches", "GateResult"]


def calibration_batches(spec: ModelSpec) -> tuple[list[dict], str]:
    """Static int8's calibration batches, and where they came from."""
    return sample_batches(spec, spec.serving.precision_settings.calibration)


def judge_precision(spec: ModelSpec, weights_path: Path, served: nn.Module | None,
                    artifact: Path | None = None) -> GateResult:
    """The gate's figures of the served model (or `artifact`) against fp32 eager from the same
    weights, on the evaluation samples (else the calibration ones, else the golden inputs).
    Raises PrecisionError when a figure is beyond its bar."""
    settings = spec.serving.precision_settings
    batches, source = sample_batches(spec, settings.evaluation or settings.calibration)
    fp32 = replace(spec, serving=replace(spec.serving, precision="fp32", runtime="eager",
                                         precision_settings=PrecisionSettings()))
    reference_model = ModelIO(fp32, build_model(fp32, weights_path, device=torch.device("cpu")).model)
    reference = [reference_model(_as_fp32(batch)) for batch in batches]
    if artifact is not None:
        from scripts.artifact_check import artifact_outputs

        outputs = artifact_outputs(spec, artifact, torch.device("cpu"), batches)
    else:
        model_io = ModelIO(spec, served)
        outputs = [model_io(batch) for batch in batches]
    return judge(spec, reference, outputs, source)


def _as_fp32(batch: dict) -> dict:
    """A batch as fp32 eager takes it: floating inputs in float32."""
    cast = lambda t: t.float() if t.is_floating_point() else t
    return {name: [cast(t) for t in value] if isinstance(value, list) else cast(value)
            for name, value in batch.items()}
