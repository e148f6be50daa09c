"""Where and how a model runs: the device, the dtypes, and the process-wide torch settings a worker
makes for its spec."""

from __future__ import annotations

import torch
from torch import nn

from handlers.precision import precision_named
from handlers.spec import InputSpec, ModelSpec

__all__ = ["select_device", "model_dtype", "input_dtype", "apply_process_settings", "prepare_model"]



def select_device(requested: str, gpu_id: int | str | None, *,
                  cuda_available: bool | None = None) -> torch.device:
    """The device to serve on: `cuda:<gpu_id>` when TorchServe assigned a GPU and CUDA works,
    else the CPU. Raises RuntimeError for `device: gpu` without a usable GPU."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    gpu_usable = cuda_available and gpu_id is not None
    if requested == "cpu":
        return torch.device("cpu")
    if gpu_usable:
        return torch.device(f"cuda:{int(gpu_id)}")
    if requested == "gpu":
        reason = "torch.cuda.is_available() is False" if not cuda_available else \
            "TorchServe assigned no GPU to this worker (number_of_gpu=0 or deviceType cpu)"
        # No "CUDA" in this text: TorchServe maps RuntimeErrors mentioning CUDA to "out of memory".
        raise RuntimeError(f"spec asks for serving.device: gpu but {reason}. Run on a GPU host "
                           "with a GPU build of torch, or set serving.device to auto or cpu.")
    return torch.device("cpu")


def model_dtype(spec: ModelSpec) -> torch.dtype:
    """The floating-point dtype the model runs in, from `serving.precision` (int8 runs its
    quantized layers between float32 ones)."""
    return getattr(torch, precision_named(spec.serving.precision).dtype)


def input_dtype(spec: ModelSpec, model_input: InputSpec | None = None) -> torch.dtype:
    """The dtype an input is decoded to: floating inputs follow the model's precision."""
    declared = getattr(torch, (model_input or spec.input).dtype)
    return model_dtype(spec) if declared.is_floating_point else declared


def apply_process_settings(spec: ModelSpec) -> None:
    """The worker-wide torch settings the spec asks for.

    TF32 is set explicitly either way: importing TorchServe's BaseHandler turns it on ("high")
    for every model in the process, which the fp32 golden tolerance would not allow. Threads apply
    on a GPU too: the worker's own CPU work (decoding, softmax) gains nothing from all cores, and
    several workers each spinning up every core's thread starve one another.
    """
    torch.set_float32_matmul_precision("high" if spec.serving.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = spec.serving.tf32
    torch.set_num_threads(spec.serving.cpu_threads)


def prepare_model(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """The loaded model in the memory layout the spec asks for."""
    if spec.serving.channels_last:
        # convolutions then run in NHWC; their NCHW inputs are converted inside the first one
        model = model.to(memory_format=torch.channels_last)
    return model
