"""Requests of different lengths in one TorchServe batch, without changing any request's answer.

Padding changes what an LSTM's last state or a convolution sees, so it happens only when the spec
names an attention mask: then every part of the batch is padded to the longest (inputs with their
`pad` value, the mask with 0) and runs in one forward pass. A model that takes lists (`batching:
list`, torchvision's detectors) gets every sample of the batch in one forward pass, each its own
tensor at its own size. Otherwise parts of the same shape run together, one forward pass per
distinct shape. Outputs that follow a dynamic input dimension are cut back to each part's own
length, on the same axes; per-sample outputs (a list, one tensor per sample) go back by sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from handlers.inputs import Part
from handlers.kinds.tensor import pad_concat
from handlers.spec import ModelSpec

__all__ = ["Batcher", "Batch", "Outputs"]

Outputs = dict[str, np.ndarray | list[np.ndarray]]  # one request's rows per output name
Rows = np.ndarray | list[np.ndarray]  # (n, ...) rows, or n per-sample arrays


@dataclass(slots=True)  # one per request of every batch: no frozen dataclass's setattr calls
class _Member:
    request: int
    part: Part
    start: int  # its first row in the batch


@dataclass(frozen=True)
class Batch:
    """One forward pass: its input tensors on the device (or lists of per-sample tensors), and
    whose rows they are."""
    inputs: dict[str, Tensor | list[Tensor]]
    members: list[_Member]


class Batcher:
    def __init__(self, spec: ModelSpec, device: torch.device, dtypes: dict[str, torch.dtype],
                 pad_values: dict[str, float]) -> None:
        self.spec, self.device, self.dtypes, self.pad_values = spec, device, dtypes, pad_values
        self.inputs = {i.name: i for i in spec.inputs}
        self.follows = {o.name: o.follows for o in spec.outputs if o.follows}

    def batches(self, requests: list[list[Part]]) -> list[Batch]:
        """The requests' parts as forward passes of at most the spec's batch size (the range an
        exported artifact is built and proven for; a request may hold more samples): padded
        together with an attention mask, all as lists for a list-taking model, else one group
        per distinct shape."""
        cap = self.spec.serving.batch_size
        members = [(index, piece) for index, parts in enumerate(requests) for part in parts
                   for piece in _pieces(part, cap)]
        if self._one_pass(members, cap):
            return [self._batch(members)]
        if self.spec.io.batching == "list" or self.spec.io.attention_mask:
            keys = [0] * len(members)  # all together
        else:
            keys = [tuple(part[name].shape[1:] for name in self.inputs) for _, part in members]
        groups: dict[object, list[list[tuple[int, Part]]]] = {}
        filled: dict[object, int] = {}  # rows in each group's last chunk
        for key, member in zip(keys, members):
            chunks = groups.setdefault(key, [[]])
            rows = len(next(iter(member[1].values())))
            if filled.get(key, 0) + rows > cap:
                chunks.append([])
                filled[key] = 0
            chunks[-1].append(member)
            filled[key] = filled.get(key, 0) + rows
        return [self._batch(chunk) for chunks in groups.values() for chunk in chunks]

    def _one_pass(self, members: list[tuple[int, Part]], cap: int) -> bool:
        """Whether the members make one forward pass as they are: the common case of a full
        batch of same-shaped requests, decided without grouping."""
        if len(members) > cap or self.spec.io.batching == "list":
            return False
        shapes = {tuple(array.shape[1:] for array in part.values()) for _, part in members}
        return len(shapes) == 1 and sum(len(next(iter(p.values()))) for _, p in members) <= cap

    def _batch(self, chunk: list[tuple[int, Part]]) -> Batch:
        """One forward pass: stacked (padded to the longest when they differ), or as lists."""
        group, start = [], 0
        for index, part in chunk:
            group.append(_Member(index, part, start))
            start += len(next(iter(part.values())))
        if self.spec.io.batching == "list":
            return Batch({name: [self._on_device(name, row) for m in group for row in m.part[name]]
                          for name in self.inputs}, group)
        return Batch({name: self._tensor(name, [m.part[name] for m in group])
                      for name in self.inputs}, group)

    def split(self, batches: list[Batch], outputs: list[dict[str, Tensor | list[Tensor]]],
              requests: int) -> list[Outputs]:
        """Every request's rows of every output, cut back to its lengths, in request order."""
        per_request: list[dict[str, list[Rows]]] = [{} for _ in range(requests)]
        for batch, batch_outputs in zip(batches, outputs):
            arrays = {name: [_to_numpy(v) for v in value] if isinstance(value, list)
                      else _to_numpy(value) for name, value in batch_outputs.items()}
            for member in batch.members:
                rows = len(next(iter(member.part.values())))
                for name, values in arrays.items():
                    piece = self._trimmed(name, values[member.start:member.start + rows], member.part)
                    per_request[member.request].setdefault(name, []).append(piece)
        return [{name: _joined(pieces) for name, pieces in outputs.items()}
                for outputs in per_request]

    def _tensor(self, name: str, arrays: list[np.ndarray]) -> Tensor:
        """One input's arrays as a tensor on the device, padded to the longest when they differ;
        on a GPU through pinned memory, so the copy is asynchronous."""
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) == 1:
            stacked = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        else:
            longest = tuple(max(sizes) for sizes in zip(*shapes))
            stacked = pad_concat(arrays, longest, self.pad_values[name])
        return self._on_device(name, stacked)

    def _on_device(self, name: str, array: np.ndarray) -> Tensor:
        """An array as a tensor on the device at the input's dtype; on a GPU through pinned
        memory, so the copy is asynchronous."""
        if not array.flags.writeable:  # a v2 binary tensor is a view of the request bytes
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, dtype=self.dtypes[name], non_blocking=True)

    def _trimmed(self, output: str, values: Rows, part: Part) -> Rows:
        """An output that follows an input's dynamic dimensions, cut back to this part's lengths
        on the input's own axes (an image's height and width) (copied when the cut leaves gaps:
        the encoders need C-contiguous arrays)."""
        source = self.follows.get(output)
        if source is None:
            return values
        axes = self.inputs[source].dynamic
        lengths = [part[source].shape[1 + axis] for axis in axes]
        if isinstance(values, list):  # per sample, no batch axis
            return [np.ascontiguousarray(value[_cut(value.ndim, axes, lengths, 0)]) for value in values]
        return np.ascontiguousarray(values[_cut(values.ndim, axes, lengths, 1)])


def _pieces(part: Part, cap: int) -> list[Part]:
    """A part of more samples than `cap`, in slices of at most `cap`."""
    rows = len(next(iter(part.values())))
    if rows <= cap:
        return [part]
    return [{name: array[start:start + cap] for name, array in part.items()}
            for start in range(0, rows, cap)]


def _cut(ndim: int, axes: tuple[int, ...], lengths: list[int], offset: int) -> tuple:
    """An index taking the first `lengths` along `axes` (+ offset), all of every other axis."""
    index = [slice(None)] * ndim
    for axis, length in zip(axes, lengths):
        if axis + offset < ndim:
            index[axis + offset] = slice(0, length)
    return tuple(index)


def _to_numpy(value: Tensor) -> np.ndarray:
    """Back to the CPU once; floating outputs as float32 (JSON and numpy have no bfloat16)."""
    value = value.detach()
    return (value.float() if value.is_floating_point() else value).cpu().numpy()


def _joined(pieces: list[Rows]) -> Rows:
    """A request's rows as one array, or per sample when its parts differ in shape (or are
    per-sample outputs already)."""
    if isinstance(pieces[0], list):
        return [row for piece in pieces for row in piece]
    if len(pieces) == 1:
        return pieces[0]
    if len({p.shape[1:] for p in pieces}) == 1:
        return np.concatenate(pieces)
    return [row for piece in pieces for row in piece]
