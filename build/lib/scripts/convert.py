"""`mar convert-legacy`: turn a trusted `torch.save(model)` file into a clean state_dict, once.

Unpickling such a file runs whatever code it names, so this is the one place that does it, and only
when the user says they trust the file. The result is checked by loading it strictly into the
registered architecture and by reading it back with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from handlers.checkpoint import read_checkpoint
from model_defs import create_model
from handlers.errors import UsageError, WeightsError

__all__ = ["convert_legacy"]


def convert_legacy(source: Path, out: Path, *, arch: str, params: dict, trusted: bool) -> int:
    """Write the state_dict inside the pickled model `source` to `out` (.pt or .safetensors).

    Returns the number of tensors written. Raises MarError when not trusted, when the pickle cannot
    be loaded, or when the weights do not load strictly into `arch` with `params`.
    """
    if not trusted:
        raise UsageError(f"converting {source} unpickles it, which runs any code it contains. Only "
                       "for files you trust, pass --trust-this-file.")
    if out.exists():
        raise UsageError(f"{out} exists; choose another --out path (nothing is overwritten).")
    state_dict = _state_dict_of(_unpickle(source), source)
    model = create_model(arch, **params)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"the weights in {source} do not load strictly into {arch!r} with params "
                       f"{params}: {err}. Fix --arch or --params.") from None
    _save(model, out)
    return len(read_checkpoint(out).state_dict)  # proves it reads back without unpickling code


def _unpickle(source: Path) -> object:
    try:
        return torch.load(source, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        raise WeightsError(f"{source} refers to code that is not importable here ({err}). Put the "
                       "training code's package on PYTHONPATH for this one command.") from None
    except (RuntimeError, OSError, EOFError) as err:
        raise WeightsError(f"{source} is not a readable PyTorch file ({err}).") from None


def _state_dict_of(obj: object, source: Path) -> dict:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model", "module", "net"):
            if isinstance(obj.get(key), nn.Module):
                return obj[key].state_dict()
    raise WeightsError(f"{source} holds a {type(obj).__name__}, not a pickled nn.Module; if it is "
                   "already a state_dict, use it directly as `weights`.")


def _save(model: nn.Module, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_model  # stores tied tensors once

        save_model(model, str(out))
    else:
        torch.save(model.state_dict(), out)
