"""The accuracy gate: a reduced precision against fp32 eager on the same samples, at build.

    max_rel_error, mean_rel_error   per output: |served - fp32| over each sample's largest |fp32|
                                    (so a logit near zero does not blow the figure up)
    top1_agreement                  the classified output's argmax, the same as fp32's
    topk_overlap                    with `top_k`: the share of fp32's top k the served top k holds

The bars are the precision's defaults (handlers/precision.py) with the spec's `accept` over them;
a figure beyond its bar fails the build, printing every figure. The figures go into the build
record (`mar verify`, `mar models --repo` show them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from handlers.errors import PrecisionError
from handlers.precision import GATE_METRICS, precision_named
from handlers.spec import ModelSpec

__all__ = ["GateResult", "judge"]

Tensors = dict[str, "Tensor | list[Tensor]"]


@dataclass(frozen=True)
class GateResult:
    precision: str
    samples: int
    source: str  # where the samples came from
    figures: dict[str, float]  # the gate's figures over every output
    per_output: dict[str, dict[str, float]]  # output -> its max and mean relative error
    bars: dict[str, float]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        return [f"{name} {self.figures[name]:.4g} (bar {bar:g})" for name, bar in self.bars.items()
                if name in self.figures and (self.figures[name] < bar
                                             if GATE_METRICS[name] == "min"
                                             else self.figures[name] > bar)]

    def describe(self) -> str:
        shown = ", ".join(f"{name} {value:.4g}" for name, value in self.figures.items())
        return f"{self.precision} vs fp32 eager on {self.samples} samples ({self.source}): {shown}"

    def to_record(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def judge(spec: ModelSpec, reference: list[Tensors], served: list[Tensors], source: str) -> GateResult:
    """The gate's figures of `served` against `reference` (fp32), batch by batch. Raises
    PrecisionError with every figure when one is beyond its bar."""
    precision = precision_named(spec.serving.precision)
    bars = {**precision.accept, **spec.serving.precision_settings.accept}
    for ref, got in zip(reference, served):
        for name in ref:
            if len(ref[name]) != len(got[name]):
                raise PrecisionError(f"{spec.source}: serving.precision {spec.serving.precision} "
                                     f"({spec.serving.runtime}) answers a batch of {len(ref[name])} "
                                     f"with {len(got[name])} rows of `{name}`. Nothing was "
                                     "written. Serve it with another runtime, or eager.")
    per_output = {name: _relative_errors([r[name] for r in reference], [s[name] for s in served])
                  for name in reference[0]}
    figures = {"max_rel_error": max(e["max_rel_error"] for e in per_output.values()),
               "mean_rel_error": max(e["mean_rel_error"] for e in per_output.values())}
    classified = spec.io.classified_output
    if classified is not None and _scores(reference[0][classified]):
        ref = torch.cat([_rows(r[classified]) for r in reference])
        got = torch.cat([_rows(s[classified]) for s in served])
        figures["top1_agreement"] = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
        if spec.io.top_k:
            k = min(spec.io.top_k, ref.shape[-1])
            overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in
                       zip(ref.topk(k, dim=-1).indices, got.topk(k, dim=-1).indices)]
            figures["topk_overlap"] = sum(overlap) / len(overlap)
    samples = sum(len(_rows(r[next(iter(r))])) for r in reference)
    result = GateResult(spec.serving.precision, samples, source, figures, per_output,
                        {k: v for k, v in bars.items() if k in figures})
    if not result.passed:
        raise PrecisionError(
            f"{spec.source}: serving.precision {spec.serving.precision} fails its accuracy gate: "
            f"{'; '.join(result.failures)}. Measured: {result.describe()}. Nothing was written. "
            "Serve a higher precision (fp32, or bf16 before int8), calibrate int8 on real samples "
            "(serving.precision.calibration), or, if this loss is acceptable for your use, lower "
            "the bar in serving.precision.accept.")
    return result


def _relative_errors(reference: list, served: list) -> dict[str, float]:
    worst, total, count = 0.0, 0.0, 0
    for ref, got in zip(_flat(reference), _flat(served)):
        if ref.shape != got.shape:  # per-sample outputs of another size (a box more)
            return {"max_rel_error": float("inf"), "mean_rel_error": float("inf")}
        ref, got = ref.float().reshape(len(ref), -1), got.float().reshape(len(ref), -1)
        scale = ref.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        error = (got - ref).abs() / scale
        worst = max(worst, float(error.max()) if error.numel() else 0.0)
        total, count = total + float(error.sum()), count + error.numel()
    return {"max_rel_error": worst, "mean_rel_error": total / max(count, 1)}


def _flat(values: list) -> list[Tensor]:
    """Batch tensors as they are; per-sample lists as one-sample batches."""
    return [t[None] for v in values for t in v] if isinstance(values[0], list) else values


def _rows(value) -> Tensor:
    return torch.stack(list(value)) if isinstance(value, list) else value


def _scores(value) -> bool:
    first = value[0] if isinstance(value, list) else value
    return first.is_floating_point()
