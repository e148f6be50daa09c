"""The serving runtimes, one table entry each: what a runtime is in the spec, the archive, the
build and the worker. Adding a runtime, or a precision for one, touches its entry only.

    eager        the state_dict, rebuilt from model_defs (handlers/construction.py)
    torchscript  model.ts.pt  torch.jit.load, on any device
    onnx         model.onnx   onnxruntime, with the CUDA provider when serving on a GPU
    aoti         model.pt2    torch._inductor.aoti_load_package; compiled for one device type

Every artifact takes the inputs by position in the spec's order and returns the outputs as a tuple
in the spec's order: `mar build` exports a wrapper that makes it so (scripts/export.py). A
per-sample model's artifact (batching: list, or outputs per sample) takes one sample, without a
batch dimension, and is called once for each sample of a batch.

The table is read by the spec's validation, which must not need torch: torch is imported by the
loaders only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.errors import IntegrityError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from handlers.spec import ModelSpec

__all__ = ["Runtime", "RUNTIMES", "runtime_named", "load_exported", "ExportedModel"]

Loader = Callable[["ModelSpec", Path, "torch.device"], Callable[[list], Any]]


@dataclass(frozen=True)
class Runtime:
    name: str  # serving.runtime in the spec
    label: str  # the runtime's own name, for messages
    artifact: str | None  # the archive file that replaces the state_dict; None: the state_dict
    load: Loader | None  # (spec, artifact, device) -> a call taking inputs by position
    exporter: str | None  # "module:function" in scripts/ that writes the artifact at build
    int8_static: str | None = None  # "module:function" writing a calibrated static int8 artifact
    device_bound: bool = False  # compiled for one device type: served only where it was built
    checked_in_child: bool = False  # native code: the build runs it in a child process first
    # precision (int8 with its mode: "int8 static") -> why this runtime cannot serve it
    refused_precisions: dict[str, str] = field(default_factory=dict)

    @property
    def exported(self) -> bool:
        return self.artifact is not None


def _torchscript(spec: ModelSpec, path: Path, device: torch.device):
    import torch

    module = torch.jit.load(str(path), map_location=device).eval()
    return lambda args: module(*args)


def _aoti(spec: ModelSpec, path: Path, device: torch.device):
    import torch

    compiled = torch._inductor.aoti_load_package(str(path))
    return lambda args: compiled(*args)


def _onnx(spec: ModelSpec, path: Path, device: torch.device):
    import numpy as np
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = spec.serving.cpu_threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        available = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise IntegrityError(
                f"serving {path.name} on {device} needs onnxruntime's CUDAExecutionProvider; this "
                f"onnxruntime has {', '.join(available)}. Install onnxruntime-gpu on GPU hosts, "
                "or serve on the CPU.")
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), *providers]
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    names = [i.name for i in session.get_inputs()]

    def call(args: list[Tensor]):
        feeds = {name: arg.detach().cpu().numpy() for name, arg in zip(names, args)}
        return [torch.from_numpy(np.asarray(value)).to(device) for value in session.run(None, feeds)]

    return call


_STATIC_COMPILED = ("static int8 runs as a graph compiled around its int8 operations: serve it "
                    "with runtime aoti (pt2e + AOTInductor) or onnx (ONNX Runtime QDQ)")
_DYNAMIC_EAGER = ("dynamic int8 (int8 Linear and LSTM weights, activations quantized per "
                  "batch) is served by the eager runtime")
RUNTIMES: dict[str, Runtime] = {runtime.name: runtime for runtime in (
    Runtime("eager", "eager PyTorch", artifact=None, load=None, exporter=None,
            refused_precisions={"int8 static": _STATIC_COMPILED}),
    Runtime("torchscript", "TorchScript", artifact="model.ts.pt", load=_torchscript,
            exporter="scripts.export:export_torchscript",
            refused_precisions={"int8 static": _STATIC_COMPILED, "int8 dynamic": _DYNAMIC_EAGER}),
    Runtime("onnx", "ONNX Runtime", artifact="model.onnx", load=_onnx, exporter="scripts.export:export_onnx",
            int8_static="scripts.precision.quantize:onnx_static", refused_precisions={"bf16": "ONNX Runtime's CPU provider has no bfloat16 Conv or "
                                        "MatMul: it refuses the graph ('Type tensor(bfloat16) of "
                                        "input parameter of operator Conv is invalid')",
                                "int8 dynamic": _DYNAMIC_EAGER}),
    Runtime("aoti", "AOTInductor", artifact="model.pt2", load=_aoti, exporter="scripts.export:export_aoti",
            int8_static="scripts.precision.quantize:aoti_static", device_bound=True,
            checked_in_child=True,
            refused_precisions={"int8 dynamic": _DYNAMIC_EAGER}),
)}


def runtime_named(name: str) -> Runtime:
    """The table entry of a validated spec's `serving.runtime`."""
    return RUNTIMES[name]


def per_sample_artifact(spec: ModelSpec) -> bool:
    """Whether a model's artifact takes one sample at a time (its outputs differ per sample)."""
    return spec.io.batching == "list" or spec.io.per_sample


class ExportedModel:
    """An artifact called with {input name: tensor (or per-sample list)}, answering {output name:
    tensor (or per-sample list)}, as ModelIO answers for the eager model."""

    def __init__(self, spec: ModelSpec, runtime: Runtime, call, device: torch.device) -> None:
        self.spec, self.runtime, self._call, self.device = spec, runtime, call, device
        self.input_names = [i.name for i in spec.inputs]
        self.output_names = [o.name for o in spec.outputs]
        self.per_sample = per_sample_artifact(spec)

    def __call__(self, inputs: dict[str, Tensor | list[Tensor]]) -> dict[str, Tensor | list]:
        import torch

        with torch.inference_mode():
            if not self.per_sample:
                return self._named(self._call([inputs[name] for name in self.input_names]))
            samples = len(inputs[self.input_names[0]])
            answers = [self._named(self._call([inputs[name][i] for name in self.input_names]))
                       for i in range(samples)]
        if self.spec.io.per_sample:
            return {name: [a[name] for a in answers] for name in self.output_names}
        return {name: torch.cat([a[name] for a in answers]) for name in self.output_names}

    def _named(self, returned) -> dict[str, Tensor]:
        import torch

        values = [returned] if isinstance(returned, torch.Tensor) else list(returned)
        return dict(zip(self.output_names, values))


def load_exported(spec: ModelSpec, path: Path, device: torch.device, *,
                  target_device: str) -> ExportedModel:
    """The artifact at `path` ready to serve on `device`. Raises IntegrityError when a
    device-bound artifact was compiled for another device type than `device`."""
    runtime = runtime_named(spec.serving.runtime)
    if runtime.device_bound and target_device != device.type:
        raise IntegrityError(
            f"{path.name} was compiled by {runtime.label} for {target_device}, and this worker "
            f"serves on {device}. Its code runs only on the device type it was built for: "
            f"rebuild on a {'GPU' if device.type == 'cuda' else 'CPU'} host with serving.device "
            f"set to {'gpu' if device.type == 'cuda' else 'cpu'}, or serve it where it was built.")
    return ExportedModel(spec, runtime, runtime.load(spec, path, device), device)
