"""Checkpoints in shards, as Hugging Face `transformers` saves every model over a few GB:

    model.safetensors.index.json        {"metadata": {"total_size": N},
                                         "weight_map": {"<tensor>": "model-00001-of-00002.safetensors"}}
    model-00001-of-00002.safetensors
    model-00002-of-00002.safetensors

(or `pytorch_model.bin.index.json` with `pytorch_model-0000k-of-0000N.bin`). A spec's `weights` may
name such an index, or a folder that holds one, or a folder that holds one plain checkpoint. The
shards are checked against the index as they are read, one at a time and memory-mapped: a shard
that is missing, a tensor the index names that its shard lacks, a tensor in two shards or in none
of the index, and a shard the index does not name are each refused by name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from handlers.errors import WeightsError

__all__ = ["ShardIndex", "INDEX_SUFFIXES", "is_index", "resolve_weights", "read_index",
           "weight_files"]

INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".tar")
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<k>\d+)-of-(?P<n>\d+)(?P<ext>\.[a-z]+)$")


@dataclass(frozen=True)
class ShardIndex:
    path: Path
    weight_map: dict[str, str]  # tensor name -> shard file name, beside the index

    @property
    def shards(self) -> list[Path]:
        """Every shard the index names, in file-name order (the order they are read in)."""
        return [self.path.parent / name for name in sorted(set(self.weight_map.values()))]

    def tensors_in(self, shard: Path) -> set[str]:
        return {name for name, file in self.weight_map.items() if file == shard.name}


def is_index(path: Path) -> bool:
    return path.name.endswith(INDEX_SUFFIXES)


def resolve_weights(path: Path) -> Path:
    """The file a spec's `weights` stands for: the path itself, or in a folder its one index (else
    its one checkpoint). Raises WeightsError naming what the folder holds."""
    if not path.is_dir():
        return path
    indexes = sorted(p for p in path.iterdir() if is_index(p))
    if len(indexes) == 1:
        return indexes[0]
    if indexes:
        raise WeightsError(f"{path} holds {len(indexes)} shard indexes "
                           f"({', '.join(p.name for p in indexes)}); point `weights` at the one to "
                           f"serve, e.g. weights: {path.name}/{indexes[0].name}")
    checkpoints = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(
        _CHECKPOINT_SUFFIXES) and not _SHARD_NAME.match(p.name))
    if len(checkpoints) == 1:
        return checkpoints[0]
    found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
    raise WeightsError(
        f"{path} holds {'several checkpoints' if checkpoints else 'no checkpoint'} (found: {found}); "
        "a weights folder holds one shard index (*.safetensors.index.json or *.bin.index.json) "
        "or one checkpoint. Point `weights` at the file to serve.")


def read_index(path: Path) -> ShardIndex:
    """A shard index, checked against the folder: every shard it names is there, and no shard of
    its name pattern is there that it does not name. Raises WeightsError."""
    try:
        data = json.loads(path.read_text())
        weight_map = data["weight_map"]
    except FileNotFoundError:
        raise WeightsError(f"no shard index at {path}; fix the spec's `weights`") from None
    except (ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{path} is not a shard index as transformers writes it ({err}): expected "
                           '{"metadata": {...}, "weight_map": {"<tensor>": "<shard file>"}}') from None
    if not (isinstance(weight_map, dict) and weight_map and all(
            isinstance(k, str) and isinstance(v, str) and "/" not in v and v not in ("", ".", "..")
            for k, v in weight_map.items())):
        raise WeightsError(f"{path}: `weight_map` must map tensor names to shard file names beside "
                           "the index")
    index = ShardIndex(path, weight_map)
    missing = [shard.name for shard in index.shards if not shard.is_file()]
    if missing:
        raise WeightsError(f"{path} names shard(s) {', '.join(missing)}, missing from "
                           f"{path.parent}. Copy every shard of the checkpoint beside its index.")
    stray = _unnamed_shards(index)
    if stray:
        raise WeightsError(f"{path.parent} holds shard(s) {', '.join(stray)} that {path.name} does "
                           "not name: a shard of another save, or a stale one. Remove it, or use "
                           "the index written with it.")
    return index


def _unnamed_shards(index: ShardIndex) -> list[str]:
    """Files beside the index named like its shards (`<stem>-k-of-n<ext>`) that it does not name."""
    named = {shard.name for shard in index.shards}
    stems = {(m["stem"], m["ext"]) for m in (_SHARD_NAME.match(n) for n in named) if m}
    return sorted(p.name for p in index.path.parent.iterdir()
                  if (m := _SHARD_NAME.match(p.name)) and (m["stem"], m["ext"]) in stems
                  and p.name not in named)


def weight_files(path: Path) -> list[Path]:
    """The files a checkpoint is made of: the file itself, or an index and its shards."""
    return [path, *read_index(path).shards] if is_index(path) else [path]
