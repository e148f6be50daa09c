"""Exported models in the worker: the artifact `mar build` wrote for `serving.runtime`, loaded and
called with named inputs like the eager model (handlers/model_io.py).

    torchscript  model.ts.pt  torch.jit.load, on any device
    onnx         model.onnx   onnxruntime, with the CUDA provider when serving on a GPU
    aoti         model.pt2    torch._inductor.aoti_load_package; compiled for one device type

Every artifact takes the inputs by position in the spec's order and returns the outputs as a tuple
in the spec's order: `mar build` exports a wrapper that makes it so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from handlers.errors import IntegrityError
from handlers.spec import RUNTIMES, ModelSpec

__all__ = ["RUNTIMES", "ARTIFACTS", "load_exported", "ExportedModel"]

ARTIFACTS = {"torchscript": "model.ts.pt", "onnx": "model.onnx", "aoti": "model.pt2"}
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
          torch.int64: np.int64, torch.int32: np.int32, torch.uint8: np.uint8, torch.bool: np.bool_}


class ExportedModel:
    """An artifact called with {input name: tensor}, answering {output name: tensor}."""

    def __init__(self, spec: ModelSpec, runtime: str, call, device: torch.device) -> None:
        self.spec, self.runtime, self._call, self.device = spec, runtime, call, device
        self.input_names = [i.name for i in spec.inputs]
        self.output_names = [o.name for o in spec.outputs]

    def __call__(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.inference_mode():
            returned = self._call([inputs[name] for name in self.input_names])
        values = [returned] if isinstance(returned, Tensor) else list(returned)
        return dict(zip(self.output_names, values))


def load_exported(spec: ModelSpec, path: Path, device: torch.device, *,
                  target_device: str) -> ExportedModel:
    """The artifact at `path` ready to serve on `device`. Raises IntegrityError when it was
    compiled for another device type than `device`."""
    runtime = spec.serving.runtime
    if runtime == "aoti" and target_device != device.type:
        raise IntegrityError(
            f"{path.name} was compiled by AOTInductor for {target_device}, and this worker serves "
            f"on {device}. AOTInductor code runs only on the device type it was built for: "
            f"rebuild on a {'GPU' if device.type == 'cuda' else 'CPU'} host with serving.device "
            f"set to {'gpu' if device.type == 'cuda' else 'cpu'}, or serve it where it was built.")
    loader = {"torchscript": _torchscript, "onnx": _onnx, "aoti": _aoti}[runtime]
    return ExportedModel(spec, runtime, loader(spec, path, device), device)


def _torchscript(spec: ModelSpec, path: Path, device: torch.device):
    module = torch.jit.load(str(path), map_location=device).eval()
    return lambda args: module(*args)


def _aoti(spec: ModelSpec, path: Path, device: torch.device):
    compiled = torch._inductor.aoti_load_package(str(path))
    return lambda args: compiled(*args)


def _onnx(spec: ModelSpec, path: Path, device: torch.device):
    import onnxruntime

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
