"""Export the validated eager model to the spec's `serving.runtime`, and prove the artifact equal.

1. torch.export captures the model with a dynamic batch dimension (up to the spec's batch size)
   and the spec's dynamic dimensions (up to their `max`). This is the gate for every runtime: it
   refuses data-dependent control flow instead of recording the one path an example took (which
   tracing does silently), so an artifact is built only from a graph that holds for every input the
   eager model accepts within the spec's shapes.
2. The runtime's exporter writes the artifact: torch.jit.trace (TorchScript), torch.onnx.export
   with dynamo=True (ONNX), aoti_compile_and_package with Inductor's freezing (AOTInductor, for
   the device it is built on).
3. The artifact, loaded back exactly as a worker loads it, runs every golden case and each case's
   first sample alone (batch 1), and must match eager within the precision's tolerance; else the
   build fails with the error per output (scripts/artifact_check.py).
Nothing is written into the model store unless all three pass.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from handlers.errors import ExportError, MarError
from handlers.model_io import ModelIO
from handlers.records import GoldenRecord
from handlers.runtimes import Runtime, per_sample_artifact, runtime_named
from handlers.spec import ModelSpec
from scripts.artifact_check import artifact_outputs, check_against_eager, first_sample, refusal

__all__ = ["ExportedArtifact", "export_artifact", "exporter_of", "export_torchscript", "export_onnx",
           "export_aoti"]


@dataclass(frozen=True)
class ExportedArtifact:
    path: Path  # the artifact, in a temporary folder the caller removes
    target_device: str  # "cpu" or "cuda": where it was built to run
    seconds: float
    max_error: float | None  # against eager, over the golden cases and batch 1 (None: int8)
    golden: GoldenRecord | None = None  # static int8: the artifact's own outputs, the new record


class _Positional(nn.Module):
    """The model with the artifacts' calling convention: inputs by position in the spec's order,
    outputs as a tuple in the spec's order. A per-sample model's artifact takes one sample
    (without a batch dimension) and returns that sample's outputs."""

    def __init__(self, spec: ModelSpec, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._io = ModelIO(spec, model)
        self.names = self._io.input_names
        self.one_sample, self.listed = per_sample_artifact(spec), spec.io.batching == "list"
        self.outputs_per_sample = spec.io.per_sample

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        samples = 1 if self.one_sample else inputs[0].shape[0]
        if self.one_sample:
            inputs = tuple([x] if self.listed else x[None] for x in inputs)
        if self._io.by_keyword:
            returned = self.model(**dict(zip(self.names, inputs)))
        else:
            returned = self.model(*inputs)
        named = self._io.name_outputs(returned, samples=samples)
        return tuple(v[0] if self.outputs_per_sample else v for v in named.values())


def export_artifact(spec: ModelSpec, model: nn.Module, golden: GoldenRecord, folder: Path, *,
                    calibration: list | None = None) -> ExportedArtifact:
    """Export `model` (eval mode, loaded and validated) to `spec.serving.runtime` in `folder`;
    for static int8, quantized with the `calibration` batches. Raises MarError naming the
    runtime and the reason, suggesting eager."""
    runtime = runtime_named(spec.serving.runtime)
    device = _build_device(spec, runtime)
    started = time.perf_counter()
    wrapper = _Positional(spec, model).eval().to(device)
    example = [(v[0] if per_sample_artifact(spec) else v).to(device)  # one sample, or the batch
               for v in golden.largest_inputs.values()]
    path = folder / runtime.artifact
    if calibration is not None:
        _quantized(spec, runtime, wrapper, example, calibration, path)
        cases = [inputs for inputs, _ in golden.cases]
        own = artifact_outputs(spec, path, device, cases + [{k: first_sample(v) for k, v in c.items()}
                                                             for c in cases])
        return ExportedArtifact(path, device.type, time.perf_counter() - started, None,
                                GoldenRecord([(inputs, outputs) for inputs, outputs in
                                              zip(cases, own)], golden.rtol, golden.atol))
    program = _captured(spec, wrapper, example)
    try:
        exporter_of(runtime)(spec, program, example, path)
    except MarError:
        raise
    except Exception as err:  # noqa: BLE001 - any exporter failure is reported whole
        raise refusal(spec, f"the {runtime.name} exporter failed", err) from err
    seconds = time.perf_counter() - started
    error = check_against_eager(spec, runtime, path, device, golden, ModelIO(spec, model))
    return ExportedArtifact(path, device.type, seconds, error)


def _quantized(spec: ModelSpec, runtime: Runtime, wrapper: nn.Module, example: list[Tensor],
               calibration: list[dict], path: Path) -> None:
    module, function = runtime.int8_static.split(":")
    batches = [[batch[name] for name in wrapper.names] for batch in calibration]
    try:
        getattr(importlib.import_module(module), function)(
            spec, wrapper, example, {"inputs": _dynamic_shapes(spec, example)}, batches, path,
            exporter_of(runtime))
    except MarError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.export, the quantizer or the compiler refused
        raise refusal(spec, f"static int8 quantization for {runtime.name} failed", err) from err


def exporter_of(runtime: Runtime):
    """The function its table entry names: (spec, exported program, example inputs, path)."""
    module, function = runtime.exporter.split(":")
    return getattr(importlib.import_module(module), function)


def _build_device(spec: ModelSpec, runtime: Runtime) -> torch.device:
    """A device-bound runtime compiles for a device; the others export device-free graphs on the
    CPU."""
    if not runtime.device_bound:
        return torch.device("cpu")
    if spec.serving.device == "gpu":
        if not torch.cuda.is_available():
            raise ExportError(f"{spec.source}: runtime {runtime.name} with serving.device: gpu compiles CUDA "
                           "code, which needs a GPU (and a CUDA build of torch) at build time; "
                           "torch.cuda.is_available() is False here. Build on a GPU host, or set "
                           "serving.device: cpu for a CPU artifact.")
        return torch.device("cuda")
    return torch.device("cuda" if spec.serving.device == "auto" and torch.cuda.is_available()
                        else "cpu")


def _dynamic_shapes(spec: ModelSpec, example: list[Tensor]) -> tuple:
    """A Dim per dynamic dimension, shared by inputs whose k-th dynamic dimension has the same
    bound (input_ids and its attention_mask grow together); the batch dimension is one Dim (a
    per-sample artifact has none)."""
    one_sample = per_sample_artifact(spec)
    batch = torch.export.Dim("batch", min=1, max=spec.serving.batch_size) \
        if spec.serving.batch_size > 1 and not one_sample else None
    dims: dict[tuple[int, int], object] = {}
    shapes = []
    for model_input in spec.inputs:
        entry = {0: batch} if batch is not None else {}
        for k, (axis, low, bound) in enumerate(zip(model_input.dynamic, model_input.lower,
                                                   model_input.max)):
            if bound > low:
                key = (k, low, bound)
                dims.setdefault(key, torch.export.Dim(f"d{k}_{low}_{bound}", min=low, max=bound))
                entry[axis + (0 if one_sample else 1)] = dims[key]
        shapes.append(entry or None)
    return tuple(shapes)


def _captured(spec: ModelSpec, wrapper: nn.Module, example: list[Tensor]):
    try:
        return torch.export.export(wrapper, tuple(example),
                                   dynamic_shapes={"inputs": _dynamic_shapes(spec, example)})
    except Exception as err:  # noqa: BLE001 - torch.export's reason is the user's answer
        raise refusal(spec, "torch.export cannot capture the model for every input the spec "
                             "allows (data-dependent control flow, an unsupported op, or a "
                             "dimension the model fixes)", err) from err


def export_torchscript(spec: ModelSpec, program, example: list[Tensor], path: Path) -> None:
    # Traced from the exported graph, which torch.export proved free of data-dependent branches.
    traced = torch.jit.trace(program.module(), tuple(example), check_trace=False, strict=False)
    torch.jit.save(traced, str(path))


def export_onnx(spec: ModelSpec, program, example: list[Tensor], path: Path) -> None:
    onnx_program = torch.onnx.export(program, tuple(example), dynamo=True,
                                     input_names=[i.name for i in spec.inputs],
                                     output_names=[o.name for o in spec.outputs], verbose=False)
    onnx_program.save(str(path))


def export_aoti(spec: ModelSpec, program, example: list[Tensor], path: Path) -> None:
    import torch._inductor.config as inductor

    # Freezing folds the weights into the graph and prepacks them for oneDNN's convolutions (and
    # fuses static int8's quantize/dequantize into int8 kernels). Inductor freezes only with grad
    # off: under grad mode it compiled fp32 convolutions, and int8 ran as fake quantization.
    with inductor.patch(freezing=True), torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
