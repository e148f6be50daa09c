"""Save a state_dict in shards the way Hugging Face `transformers` does (`save_pretrained` with a
`max_shard_size`, through huggingface_hub's `split_torch_state_dict_into_shards`): tensors in
order, a new shard whenever the next would pass the size, named `model-00001-of-0000N.safetensors`
(or `pytorch_model-0000k-of-0000N.bin`), and the index `model.safetensors.index.json` written as
`json.dumps({"metadata": {"total_size": N}, "weight_map": {...}}, indent=2, sort_keys=True)`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["save_sharded"]


def save_sharded(state_dict: dict[str, Tensor], folder: Path, *, max_shard_bytes: int,
                 safetensors: bool = True) -> Path:
    """Write the shards and their index into `folder`; returns the index."""
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Tensor]] = [{}]
    sizes = [0]
    for name, tensor in state_dict.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and sizes[-1] + size > max_shard_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor.contiguous()
        sizes[-1] += size
    stem, suffix = ("model", ".safetensors") if safetensors else ("pytorch_model", ".bin")
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file = f"{stem}-{number:05d}-of-{len(shards):05d}{suffix}"
        if safetensors:
            from safetensors.torch import save_file

            save_file(shard, str(folder / file), metadata={"format": "pt"})
        else:
            torch.save(shard, folder / file)
        weight_map.update(dict.fromkeys(shard, file))
    index = folder / f"{stem}{suffix}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map},
                                indent=2, sort_keys=True) + "\n")
    return index
