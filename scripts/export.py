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
   build fails with the error per output.
Nothing is written into the model store unless all three pass.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from handlers.errors import ExportError, MarError
from handlers.model_io import ModelIO
from handlers.records import GoldenRecord
from handlers.runtimes import Runtime, load_exported, per_sample_artifact, runtime_named
from handlers.spec import ModelSpec, spec_to_dict

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
        own = artifact_outputs(spec, path, device, cases + [{k: _first(v) for k, v in c.items()}
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
        raise _refusal(spec, f"the {runtime.name} exporter failed", err) from err
    seconds = time.perf_counter() - started
    error = _check_against_eager(spec, runtime, path, device, golden, ModelIO(spec, model))
    return ExportedArtifact(path, device.type, seconds, error)


def artifact_outputs(spec: ModelSpec, path: Path, device: torch.device,
                     batches: list[dict]) -> list[dict]:
    """The artifact's outputs for each batch of named inputs, run as a worker runs it (in a child
    process for native code)."""
    runtime = runtime_named(spec.serving.runtime)
    return _artifact_outputs(spec, runtime, path, device, [[(b, None) for b in batches]])[0]


def _check_rows(spec: ModelSpec, batches: list[dict], outputs: list[dict]) -> None:
    """Every output of the artifact holds as many samples as its batch: else the runtime is
    refused."""
    for batch, answer in zip(batches, outputs):
        mismatch = row_mismatch(batch, answer)
        if mismatch:
            raise _fixed_batch(spec, *mismatch)


def row_mismatch(batch: dict, answer: dict) -> tuple[int, int, str] | None:
    """(samples given, rows answered, output) for the first output whose row count is not the
    batch's. torch 2.13's AOTInductor compiles conv -> flatten -> linear (the digits CNN) for the
    example's batch alone: it answers any batch with that many rows, past the input's end."""
    given = len(next(iter(batch.values())))
    return next(((given, len(value), name) for name, value in answer.items()
                 if len(value) != given), None)


def _fixed_batch(spec: ModelSpec, given: int, rows: int, name: str) -> ExportError:
    return ExportError(f"{spec.source}: the {spec.serving.runtime} artifact answers a batch of "
                       f"{given} with {rows} rows of `{name}`: it fixed the batch size it was "
                       "compiled at. Nothing was written. Serve it with another runtime (onnx), "
                       "or eager.")


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
        raise _refusal(spec, f"static int8 quantization for {runtime.name} failed", err) from err


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
        raise _refusal(spec, "torch.export cannot capture the model for every input the spec "
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


def _check_against_eager(spec: ModelSpec, runtime: Runtime, path: Path, device: torch.device,
                         golden: GoldenRecord, eager: ModelIO) -> float:
    """The artifact, loaded as a worker loads it, against eager: every golden case, and each
    case's first sample alone."""
    single = GoldenRecord([({k: _first(v) for k, v in inputs.items()},
                            eager({k: _first(v) for k, v in inputs.items()}))
                           for inputs, _ in golden.cases], golden.rtol, golden.atol)
    records = (golden, single)
    outputs = _artifact_outputs(spec, runtime, path, device, [r.cases for r in records])
    errors, worst = {}, 0.0
    for record, got in zip(records, outputs):
        result = record.compare(got)
        worst = max(worst, result.max_error)
        if not result.within:
            errors.update({k: max(v, errors.get(k, 0.0)) for k, v in result.errors.items()})
    if errors:
        rtol, atol = golden.rtol, golden.atol
        per_output = ", ".join(f"{name} {error:.3g}" if error != float("inf") else
                               f"{name}: another shape (the artifact fixed a dimension the spec "
                               "lets vary)" for name, error in errors.items())
        raise ExportError(f"{spec.source}: the {spec.serving.runtime} artifact differs from eager "
                       f"beyond the {spec.serving.precision} tolerance (rtol {rtol:g}, atol "
                       f"{atol:g}): max abs error per output: {per_output}. Nothing was written. "
                       "Serve it with serving.runtime: eager, or another runtime.")
    return worst


def _artifact_outputs(spec: ModelSpec, runtime: Runtime, path: Path, device: torch.device,
                      case_lists: list[list]) -> list[list[dict[str, Tensor]]]:
    """The artifact's outputs for each list of golden cases. AOTInductor's native code runs in a
    child process, so an artifact that crashes (it does: a channels-last CNN here) fails the
    build with the reason instead of taking `mar build` down."""
    inputs = [[{k: _moved(v, device) for k, v in case.items()} for case, _ in cases]
              for cases in case_lists]
    if not runtime.checked_in_child:
        exported = load_exported(spec, path, device, target_device=device.type)
        try:
            outputs = [[exported(case) for case in cases] for cases in inputs]
        except Exception as err:  # noqa: BLE001 - fails on an input the spec allows
            raise _refusal(spec, "the exported artifact fails on an input the spec allows (a "
                                 "golden case at another batch size or length)", err) from err
        for cases, answers in zip(inputs, outputs):
            _check_rows(spec, cases, answers)
        return outputs
    exchange = path.parent / "check.pt"
    torch.save({"spec": spec_to_dict(spec), "inputs": inputs, "device": str(device)}, exchange)
    child = _run_child(spec, runtime, path, exchange, check_inputs=True)
    if child.returncode == _FAILED_EXIT and _SIZE_ONE_ASSUMED in child.stdout:
        # AOTInductor's input check assumes every dynamic dimension is at least 2 (torch.export's
        # 0/1 specialization), yet its code computes size 1 correctly: run unchecked, and the
        # comparison with eager that follows judges it.
        child = _run_child(spec, runtime, path, exchange, check_inputs=False)
    if child.returncode == _ROWS_EXIT:
        given, rows, name = json.loads(child.stdout.strip().splitlines()[-1])
        raise _fixed_batch(spec, given, rows, name)
    if child.returncode == _FAILED_EXIT:
        given, error = json.loads(child.stdout.strip().splitlines()[-1])
        raise _refusal(spec, f"the exported artifact fails on a batch of {given}, which the spec "
                             "allows", error)
    if child.returncode != 0:
        crash = f"signal {-child.returncode}" if child.returncode < 0 else f"exit {child.returncode}"
        detail = " ".join(child.stderr.strip().splitlines()[-3:])[:400]
        raise ExportError(f"{spec.source}: the {runtime.name} artifact crashed when run ({crash}{': ' + detail if detail else ''}). "
                       "Nothing was written. Serve it with serving.runtime: eager, onnx or "
                       "torchscript.")
    outputs = torch.load(exchange, weights_only=True)
    exchange.unlink()
    return outputs


def _run_child(spec: ModelSpec, runtime: Runtime, path: Path, exchange: Path, *,
               check_inputs: bool) -> subprocess.CompletedProcess:
    """The artifact on the golden cases in a child process. `check_inputs`: AOTInductor's
    artifact checks each input's sizes against those it was compiled for and raises; unchecked,
    an artifact that fixed a dimension reads and writes past its buffers for any other size
    (torch 2.13 fixes the digits CNN's batch: the heap corrupted, the child hung)."""
    env = {**os.environ, "AOTI_RUNTIME_CHECK_INPUTS": "1" if check_inputs else "0"}
    try:
        return subprocess.run([sys.executable, "-c", _CHILD, str(path), str(exchange)],
                              capture_output=True, text=True, timeout=_CHILD_SECONDS, env=env)
    except subprocess.TimeoutExpired as err:
        raise ExportError(f"{spec.source}: the {runtime.name} artifact did not answer its golden "
                          f"cases within {_CHILD_SECONDS} s. Nothing was written. Serve it with "
                          "serving.runtime: eager, onnx or torchscript.") from err


# Loading and running its golden cases takes seconds; past this the artifact is hung.
_CHILD_SECONDS = 600
_SIZE_ONE_ASSUMED = "expected it to be >= 2, but got: 1"
_ROWS_EXIT = 3  # the child's exit status for an answer with the wrong number of rows
_FAILED_EXIT = 4  # for an input the artifact raised on

# An artifact answering the wrong number of rows has read and written past its buffers: the child
# exits at once, before a corrupted heap crashes it or hangs its OpenMP threads.
_CHILD = f"""
import json, os, sys, torch
from pathlib import Path
from handlers.runtimes import load_exported
from handlers.spec import parse_spec
from scripts.export import row_mismatch
path, exchange = Path(sys.argv[1]), sys.argv[2]
data = torch.load(exchange, weights_only=True)
device = torch.device(data["device"])
exported = load_exported(parse_spec(data["spec"]), path, device, target_device=device.type)
cpu = lambda v: [t.cpu() for t in v] if isinstance(v, list) else v.cpu()
def answer(case):
    try:
        outputs = exported(case)
    except Exception as err:
        print(json.dumps([len(next(iter(case.values()))), f"{{type(err).__name__}}: {{err}}"]),
              flush=True)
        os._exit({_FAILED_EXIT})
    mismatch = row_mismatch(case, outputs)
    if mismatch:
        print(json.dumps(mismatch), flush=True)
        os._exit({_ROWS_EXIT})
    return {{k: cpu(v) for k, v in outputs.items()}}
torch.save([[answer(case) for case in cases] for cases in data["inputs"]], exchange)
"""


def _first(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """A case's first sample alone: a batch of one, or a list of one."""
    return [value[0].clone()] if isinstance(value, list) else value[:1].clone()


def _moved(value: Tensor | list[Tensor], device: torch.device) -> Tensor | list[Tensor]:
    return [t.to(device) for t in value] if isinstance(value, list) else value.to(device)


def _refusal(spec: ModelSpec, what: str, err: Exception | str) -> MarError:
    """`err`: the exception, or its `Type: message` as a child process printed it."""
    described = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    reason = " ".join(described.split())[:600]
    return ExportError(f"{spec.source}: serving.runtime {spec.serving.runtime}: {what}: "
                       f"{reason}. Nothing was written. {_fallback(spec)}")


def _fallback(spec: ModelSpec) -> str:
    """The runtime to serve with instead (static int8 has no eager form: ONNX Runtime's is
    calibrated the same way)."""
    if spec.serving.precision == "int8" and spec.serving.precision_settings.mode == "static" \
            and spec.serving.runtime != "onnx":
        return "Serve it with serving.runtime: onnx, whose static int8 is calibrated the same way."
    return "Serve it with serving.runtime: eager, which runs the definition as written."

