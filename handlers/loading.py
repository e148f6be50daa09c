"""Rebuild a model from its spec and load its state_dict: the one loading path.

`mar build` validates weights with these functions before packaging, and the TorchServe handler
loads the packaged weights with the same functions, so a model that built is a model that loads.
This file travels inside every archive: it imports only torch, the spec module and model_defs.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from handlers.spec import ModelSpec
from model_defs import create_model

__all__ = [
    "WeightsError",
    "build_model",
    "read_state_dict",
    "check_state_dict",
    "select_device",
    "model_dtype",
    "input_dtype",
    "example_input",
]

# Wrappers that training loops put around the state_dict, next to optimizer state, epoch, etc.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
_PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class WeightsError(ValueError):
    """The weights file cannot be loaded into the architecture; the message says why and the fix."""


def build_model(spec: ModelSpec, weights_path: Path, *, device: torch.device) -> nn.Module:
    """Construct `spec.arch` with `spec.params`, load the weights strictly, return it in eval mode
    on `device` at the spec's precision. Raises WeightsError, KeyError or TypeError with the fix."""
    model = create_model(spec.arch, **spec.params)
    state_dict = read_state_dict(weights_path)
    check_state_dict(model, state_dict, spec=spec, weights_path=weights_path)
    model.load_state_dict(state_dict, strict=True)
    return model.eval().to(device=device, dtype=model_dtype(spec))


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a checkpoint without executing code, unwrap it and strip training prefixes."""
    _check_checkpoint_format(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path} holds pickled Python objects, not only tensors, so it was refused without "
            f"running it (torch.load weights_only=True: {str(err).splitlines()[0]}). Loading a "
            "whole pickled model can execute arbitrary code. In the training code save "
            "`torch.save(model.state_dict(), path)` instead."
        ) from None
    except (RuntimeError, OSError, EOFError) as err:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({err}). "
                           "Point `weights` at a file written by torch.save(state_dict).") from None
    state_dict = _unwrap(loaded, path)
    _strip_prefixes(state_dict)
    return state_dict


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], *, spec: ModelSpec,
                     weights_path: Path) -> None:
    """Raise one WeightsError listing every missing, unexpected and mis-shaped key, if any."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {list(state_dict[key].shape)} vs model {list(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    if not (missing or unexpected or mismatched):
        return
    sections = [(title, keys) for title, keys in (("missing from the checkpoint", missing),
                                                   ("unexpected in the checkpoint", unexpected),
                                                   ("shape differs", mismatched)) if keys]
    report = "\n".join(f"  {title} ({len(keys)}): " + ", ".join(keys) for title, keys in sections)
    raise WeightsError(
        f"weights {weights_path} do not fit arch {spec.arch!r} with params {spec.params} "
        f"(spec {spec.source}):\n{report}\n"
        "Likely fix: the spec's `params` differ from training (shapes), `arch` names another "
        "architecture (missing and unexpected keys), or the checkpoint is not this model's."
    )


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
    """The floating-point dtype the model runs in, from `serving.precision`."""
    return _PRECISION_DTYPES[spec.serving.precision]


def input_dtype(spec: ModelSpec) -> torch.dtype:
    """The dtype requests are decoded to: floating inputs follow the model's precision."""
    declared = getattr(torch, spec.input.dtype)
    return model_dtype(spec) if declared.is_floating_point else declared


def example_input(spec: ModelSpec, batch_size: int, *, device: torch.device) -> Tensor:
    """A seeded input batch of the spec's shape and dtype, for validation and warm-up."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, *spec.input.shape)
    dtype = input_dtype(spec)
    if dtype.is_floating_point:
        sample = torch.rand(shape, generator=generator, dtype=torch.float32).to(dtype)
    else:
        sample = torch.randint(0, 2, shape, generator=generator, dtype=dtype)
    return sample.to(device)


def _check_checkpoint_format(path: Path) -> None:
    """torch.save writes a zip (or, before PyTorch 1.6, a raw pickle stream starting with 0x80)."""
    with open(path, "rb") as file:
        head = file.read(4)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint (it starts with {head!r}). "
                           "Point `weights` at a file written by torch.save(model.state_dict()).")


def _strip_prefixes(state_dict: dict[str, Tensor]) -> None:
    """Remove wrapper prefixes shared by every key, in any order and nesting."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if state_dict and all(key.startswith(prefix) for key in state_dict):
                consume_prefix_in_state_dict_if_present(state_dict, prefix)
                stripped = True


def _unwrap(loaded: object, path: Path) -> dict[str, Tensor]:
    """The state_dict inside a checkpoint: the object itself or one of the usual wrapper keys."""
    if isinstance(loaded, Mapping) and loaded and all(isinstance(v, Tensor) for v in loaded.values()):
        return dict(loaded)
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor)
                                                            for v in inner.values()):
                return dict(inner)
    found = sorted(map(str, loaded)) if isinstance(loaded, Mapping) else type(loaded).__name__
    raise WeightsError(
        f"{path} holds no state_dict (found: {found}). Expected a mapping of parameter names to "
        f"tensors, directly or under one of {', '.join(_WRAPPER_KEYS)}. "
        "Save it with torch.save(model.state_dict(), path)."
    )
