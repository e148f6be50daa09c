"""Read a checkpoint without executing code, unwrap the state_dict and strip training prefixes.

Every load is `torch.load(weights_only=True)` (memory-mapped) or safetensors: a pickled whole model
or a crafted pickle is refused with the reason, never run.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from handlers.errors import WeightsError

__all__ = ["Checkpoint", "read_checkpoint"]

# Wrappers that training loops put around the state_dict, next to optimizer state, epoch, etc.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_EMA_KEYS = ("state_dict_ema", "model_ema")
# Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Checkpoint:
    state_dict: dict[str, Tensor]
    notes: list[str] = field(default_factory=list)  # what was normalised, for the build's output


def read_checkpoint(path: Path, *, use_ema: bool = False) -> Checkpoint:
    """Load a checkpoint without executing code, unwrap it and strip training prefixes.
    Raises WeightsError."""
    if path.suffix == ".safetensors":
        return Checkpoint(_read_safetensors(path), [f"read {path.name} with safetensors"])
    loaded = _torch_load(path)
    checkpoint = _unwrap(loaded, path, use_ema=use_ema)
    _strip_prefixes(checkpoint)
    return checkpoint


def _torch_load(path: Path) -> object:
    with open(path, "rb") as file:
        head = file.read(4)
    zip_format = head.startswith(b"PK")
    if not (zip_format or head.startswith(b"\x80")):  # torch.save writes a zip (a pickle before 1.6)
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint (it starts with {head!r}). "
                           "Point `weights` at a file written by torch.save(model.state_dict()).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zip_format)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path} holds pickled Python objects, not only tensors, so it was refused without "
            f"running it (torch.load weights_only=True: {str(err).splitlines()[0]}). A pickled "
            "model can execute arbitrary code when loaded. In the training code save "
            "`torch.save(model.state_dict(), path)` instead; for an old `torch.save(model)` file "
            "you trust, run `mar convert-legacy` once."
        ) from None
    except (RuntimeError, OSError, EOFError) as err:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({err}). "
                           "Point `weights` at a file written by torch.save(state_dict).") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file ({err}). Write it with "
                           "safetensors.torch.save_file(model.state_dict(), path).") from None


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())


def _unwrap(loaded: object, path: Path, *, use_ema: bool) -> Checkpoint:
    """The state_dict inside a checkpoint: the object itself or one of the usual wrapper keys."""
    found = ", ".join(sorted(map(str, loaded))) if isinstance(loaded, Mapping) else type(loaded).__name__
    candidates = _EMA_KEYS if use_ema else _WRAPPER_KEYS
    if not use_ema and _is_state_dict(loaded):
        return Checkpoint(dict(loaded))
    if isinstance(loaded, Mapping):
        for key in candidates:
            if _is_state_dict(loaded.get(key)):
                ignored = sorted(str(k) for k in loaded if k != key)
                note = f"took the state_dict under `{key}`" + (
                    f" (ignored: {', '.join(ignored)})" if ignored else "")
                return Checkpoint(dict(loaded[key]), [note])
    if use_ema:
        raise WeightsError(f"{path} holds no EMA weights (found: {found}); `checkpoint.use_ema` "
                           f"looks under {', '.join(_EMA_KEYS)}. Set use_ema: false, or save the "
                           "EMA model's state_dict under one of those keys.")
    raise WeightsError(
        f"{path} holds no state_dict (found: {found}). Expected a mapping of parameter names to "
        f"tensors, directly or under one of {', '.join(_WRAPPER_KEYS)}. "
        "Save it with torch.save(model.state_dict(), path).")


def _strip_prefixes(checkpoint: Checkpoint) -> None:
    """Remove wrapper prefixes shared by every key, in any order and nesting."""
    state_dict = checkpoint.state_dict
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if state_dict and all(key.startswith(prefix) for key in state_dict):
                consume_prefix_in_state_dict_if_present(state_dict, prefix)
                checkpoint.notes.append(f"stripped prefix `{prefix}` from {len(state_dict)} keys")
                stripped = True
