"""The golden batches `mar build` records (handlers/records.py's GoldenRecord): seeded inputs of
the spec's largest batch size, each input's samples made by its kind (handlers/kinds/)."""

from __future__ import annotations

import torch
from torch import Tensor

from handlers.device import input_dtype
from handlers.kinds import kind_of
from handlers.kinds.tensor import pad_concat
from handlers.spec import ModelSpec

__all__ = ["golden_inputs"]

Tensors = dict[str, Tensor]


def golden_inputs(spec: ModelSpec) -> list[Tensors]:
    """One batch per length of the dynamic dimensions (1, about half the bound, the bound), plus,
    for a model with an attention mask, one of mixed lengths padded the way the handler pads
    them; each input cast as the model takes it. A model that takes lists (`batching: list`)
    gets a list of samples of sizes spread up to the bound, and one small sample alone."""
    kinds = {i.name: kind_of(spec, i) for i in spec.inputs}
    generator = torch.Generator().manual_seed(0)
    batch = spec.serving.batch_size
    if spec.io.batching == "list":
        return _listed(spec, kinds, batch, generator)
    fractions = (0.0, 0.5, 1.0) if any(i.dynamic for i in spec.inputs) else (1.0,)
    cases: list[tuple[list, Tensors]] = []
    for fraction in fractions:
        lengths = [[_length(low, bound, fraction) for low, bound in zip(i.lower, i.max)]
                   for i in spec.inputs]
        if not cases or lengths != cases[-1][0]:
            cases.append((lengths, {i.name: kinds[i.name].golden(i.filled(lens), batch, generator)
                                    for i, lens in zip(spec.inputs, lengths)}))
    batches = [tensors for _, tensors in cases]
    if spec.io.attention_mask:
        batches.append(_mixed_lengths(spec, kinds, batch, generator))
    return [{name: tensor.to(input_dtype(spec, kinds[name].input)) for name, tensor in b.items()}
            for b in batches]


def _listed(spec: ModelSpec, kinds: dict, batch: int, generator: torch.Generator) -> list:
    cases = []
    for fractions in ([(index + 1) / batch for index in range(batch)], [0.0]):
        cases.append({i.name: [kinds[i.name].golden(
            i.filled([_length(low, b, fraction) for low, b in zip(i.lower, i.max)]), 1,
            generator)[0].to(
            input_dtype(spec, i)) for fraction in fractions] for i in spec.inputs})
    return cases


def _length(low: int, bound: int, fraction: float) -> int:
    return max(low, round(bound * fraction))


def _mixed_lengths(spec: ModelSpec, kinds: dict, batch: int, generator: torch.Generator) -> Tensors:
    """Samples of lengths spread from 1 to the bound, padded to the bound; the mask marks them."""
    samples = []
    for index in range(batch):
        fraction = (index + 1) / batch
        samples.append({i.name: kinds[i.name].golden(
            i.filled([_length(low, b, fraction) for low, b in zip(i.lower, i.max)]), 1, generator)
            for i in spec.inputs})
    return {i.name: torch.from_numpy(pad_concat([s[i.name].numpy() for s in samples], i.max_shape,
                                                kinds[i.name].pad_value)) for i in spec.inputs}
