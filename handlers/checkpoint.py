"""Read a checkpoint without executing code, find the state_dict in it and normalise its keys.

Every load is `torch.load(weights_only=True)` (memory-mapped) or safetensors: a pickled whole model
or a crafted pickle is refused with the reason, never run. Training scripts save the state_dict
beside other things (`{"state_dict", "optimizer", "epoch"}`, `{"model_state", ...}`,
`{"teacher", "student"}`); the spec's `checkpoint.key` names it, the usual names are tried without
one, and a file with exactly one mapping of tensors needs none. A sharded checkpoint (an index and
its shards, handlers/shards.py) is read shard by shard the same way, and its keys are normalised
together.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
from torch import Tensor
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from handlers.errors import WeightsError
from handlers.shards import is_index, read_index
from handlers.spec import CheckpointSpec

__all__ = ["Checkpoint", "read_checkpoint", "is_state_dict"]

# Wrappers that training loops put around the state_dict, next to optimizer state, epoch, etc.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_EMA_KEYS = ("state_dict_ema", "model_ema")
# Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
_AVERAGING_COUNTERS = ("n_averaged",)  # torch.optim.swa_utils.AveragedModel's buffer
# Plain objects training scripts save beside the weights (timm's and torchvision's `args`) that
# unpickle without running code, so weights_only may rebuild them.
_SAFE_GLOBALS = [argparse.Namespace]


@dataclass
class Checkpoint:
    state_dict: dict[str, Tensor]
    notes: list[str] = field(default_factory=list)  # what was normalised, for the build's output


def read_checkpoint(path: Path, settings: CheckpointSpec = CheckpointSpec()) -> Checkpoint:
    """Load a checkpoint (a file, or a shard index) without executing code, take the state_dict
    the spec's `checkpoint` section selects, strip training prefixes and apply the spec's.
    Raises WeightsError."""
    checkpoint = _read_shards(path, settings) if is_index(path) else _read_file(path, settings)
    _strip_training_prefixes(checkpoint)
    _apply_spec_prefixes(checkpoint, settings, path)
    return checkpoint


def _read_file(path: Path, settings: CheckpointSpec) -> Checkpoint:
    if path.suffix != ".safetensors":
        return _select(_torch_load(path), path, settings)
    if settings.key or settings.use_ema:
        raise WeightsError(f"{path} is a safetensors file: one flat mapping of tensors, with no "
                           "entries for `checkpoint.key` or `use_ema` to choose from. Remove them; "
                           'to take the keys under a prefix, write checkpoint: {strip_prefix: "model."}')
    return Checkpoint(_read_safetensors(path), [f"read {path.name} with safetensors"])


def _read_shards(path: Path, settings: CheckpointSpec) -> Checkpoint:
    """Every shard of the index at `path`, one at a time (memory-mapped), each checked against
    the index, merged into one state_dict."""
    index = read_index(path)
    merged, found_in, notes = {}, {}, []
    for shard in index.shards:
        part = _read_file(shard, settings)
        absent = sorted(index.tensors_in(shard) - set(part.state_dict))
        if absent:
            raise WeightsError(f"{shard} lacks {_preview(absent)}, which {index.path.name} places "
                               "in it: the shard and the index come from different saves. Copy "
                               "the shards written with this index.")
        unlisted = sorted(set(part.state_dict) - set(index.weight_map))
        if unlisted:
            raise WeightsError(f"{shard} holds {_preview(unlisted)}, which {index.path.name} does "
                               "not list: the shard and the index come from different saves.")
        twice = sorted(set(part.state_dict) & set(found_in))
        if twice:
            raise WeightsError(f"tensor {twice[0]} is in both {found_in[twice[0]]} and {shard.name}"
                               + (f" ({len(twice)} tensors in all)" if len(twice) > 1 else "")
                               + f"; {index.path.name} places it in "
                               f"{index.weight_map[twice[0]]}. Keep each tensor in one shard.")
        found_in.update(dict.fromkeys(part.state_dict, shard.name))
        merged.update(part.state_dict)
        notes += [note for note in part.notes if note not in notes and not note.startswith("read ")]
    return Checkpoint(merged, [f"read {len(index.shards)} shards of {path.name} "
                               f"({len(merged)} tensors), one at a time, memory-mapped", *notes])


def is_state_dict(value: object) -> bool:
    """A non-empty mapping of names to tensors."""
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())


def _torch_load(path: Path) -> object:
    with open(path, "rb") as file:
        head = file.read(4)
    zip_format = head.startswith(b"PK")
    if not (zip_format or head.startswith(b"\x80")):  # torch.save writes a zip (a pickle before 1.6)
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint (it starts with {head!r}). "
                           "Point `weights` at a file written by torch.save(model.state_dict()).")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
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


def _select(loaded: object, path: Path, settings: CheckpointSpec) -> Checkpoint:
    """The state_dict inside a checkpoint: where `checkpoint.key` points, the EMA weights, the
    object itself, one of the usual wrapper keys, or the one mapping of tensors in it."""
    if settings.key:
        return _at_key(loaded, path, settings.key)
    if settings.use_ema:
        return _under_known_key(loaded, path, _EMA_KEYS) or _refuse_no_ema(loaded, path)
    if is_state_dict(loaded):
        return Checkpoint(dict(loaded))
    return _under_known_key(loaded, path, _WRAPPER_KEYS) or _only_candidate(loaded, path)


def _under_known_key(loaded: object, path: Path, keys: tuple[str, ...]) -> Checkpoint | None:
    if not isinstance(loaded, Mapping):
        return None
    key = next((key for key in keys if is_state_dict(loaded.get(key))), None)
    return _taken(loaded, key, f"took the state_dict under `{key}`") if key else None


def _only_candidate(loaded: object, path: Path) -> Checkpoint:
    """The one direct entry that is a state_dict; refuse naming the choices otherwise."""
    candidates = {str(k): v for k, v in loaded.items() if is_state_dict(v)} \
        if isinstance(loaded, Mapping) else {}
    if len(candidates) == 1:
        (key,) = candidates
        return _taken(loaded, key, f"took the state_dict under `{key}`, the only mapping of "
                                   "tensors in the file (checkpoint.key chooses another)")
    if candidates:
        listing = ", ".join(f"`{k}` ({len(v)} tensors)" for k, v in sorted(candidates.items()))
        lines = " or ".join(f"`checkpoint: {{key: {k}}}`" for k in sorted(candidates))
        raise WeightsError(f"{path} holds {len(candidates)} state_dicts: {listing}. Choose the one "
                           f"to serve with a spec line: {lines}.")
    raise WeightsError(
        f"{path} holds no state_dict (found: {_found(loaded)}). Expected a mapping of parameter "
        f"names to tensors, directly or under one of {', '.join(_WRAPPER_KEYS)}; if it sits "
        "deeper, name it in the spec (`checkpoint: {key: outer.inner}`). "
        "Save it with torch.save(model.state_dict(), path).")


def _at_key(loaded: object, path: Path, key: str) -> Checkpoint:
    """Follow `checkpoint.key`: an entry of that exact name, else a dotted path."""
    if isinstance(loaded, Mapping) and key in loaded:
        node, walked = loaded[key], key
    else:
        node, walked = loaded, ""
        for part in key.split("."):
            if not (isinstance(node, Mapping) and part in node):
                where = f"under `{walked}`" if walked else "at the top"
                raise WeightsError(f"{path} has no `{part}` {where} (found: {_found(node)}), so "
                                   f"`checkpoint.key: {key}` does not lead to a state_dict. Fix "
                                   "the key in the spec.")
            node, walked = node[part], f"{walked}.{part}" if walked else part
    if not is_state_dict(node):
        raise WeightsError(f"`checkpoint.key: {key}` leads to {_found(node)} in {path}, not a "
                           "mapping of parameter names to tensors. Point it at the state_dict.")
    ignored = sorted(str(k) for k in loaded if k != walked.split(".")[0]) \
        if isinstance(loaded, Mapping) else []
    return Checkpoint(dict(node), [f"took the state_dict under `{walked}` (checkpoint.key)"
                                   + (f" (ignored: {', '.join(ignored)})" if ignored else "")])


def _taken(loaded: Mapping, key: str, note: str) -> Checkpoint:
    ignored = sorted(str(k) for k in loaded if k != key)
    return Checkpoint(dict(loaded[key]), [note + (f" (ignored: {', '.join(ignored)})"
                                                  if ignored else "")])


def _refuse_no_ema(loaded: object, path: Path) -> NoReturn:
    raise WeightsError(f"{path} holds no EMA weights (found: {_found(loaded)}); `checkpoint.use_ema` "
                       f"looks under {', '.join(_EMA_KEYS)}. Set use_ema: false, or save the "
                       "EMA model's state_dict under one of those keys.")


def _found(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(sorted(map(str, value))) or "an empty mapping"
    return type(value).__name__


def _apply_spec_prefixes(checkpoint: Checkpoint, settings: CheckpointSpec, path: Path) -> None:
    """`strip_prefix` keeps the keys under it, without it (dropping, and listing, the others);
    `add_prefix` puts its prefix before every key."""
    if settings.strip_prefix:
        prefix, state_dict = settings.strip_prefix, checkpoint.state_dict
        kept = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not kept:
            heads = sorted({k.split(".", 1)[0] + "." for k in state_dict if "." in k})
            raise WeightsError(f"no key of {path} starts with `checkpoint.strip_prefix` "
                               f"{prefix!r}; its keys start with {', '.join(heads[:8]) or '(no dots)'}."
                               " Fix the prefix in the spec.")
        dropped = sorted(k for k in state_dict if not k.startswith(prefix))
        checkpoint.state_dict = kept
        checkpoint.notes.append(f"stripped prefix `{prefix}` from {len(kept)} keys (checkpoint."
                                "strip_prefix)" + (f"; dropped {len(dropped)} keys outside it: "
                                                   f"{_preview(dropped)}" if dropped else ""))
    if settings.add_prefix:
        prefix = settings.add_prefix
        checkpoint.state_dict = {prefix + k: v for k, v in checkpoint.state_dict.items()}
        checkpoint.notes.append(f"added prefix `{prefix}` to {len(checkpoint.state_dict)} keys "
                                "(checkpoint.add_prefix)")


def _preview(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _strip_training_prefixes(checkpoint: Checkpoint) -> None:
    """Remove wrapper prefixes shared by every key, in any order and nesting. An EMA saved from
    torch.optim.swa_utils.AveragedModel (torchvision's references) holds the model under
    `module.` beside its `n_averaged` counter, which is dropped with it."""
    state_dict = checkpoint.state_dict
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            weights = [key for key in state_dict if key not in _AVERAGING_COUNTERS]
            if weights and all(key.startswith(prefix) for key in weights):
                for counter in sorted(set(state_dict) - set(weights)):
                    del state_dict[counter]
                    checkpoint.notes.append(f"dropped `{counter}` (AveragedModel's counter)")
                consume_prefix_in_state_dict_if_present(state_dict, prefix)
                checkpoint.notes.append(f"stripped prefix `{prefix}` from {len(state_dict)} keys")
                stripped = True
