"""Request values in, model input arrays out, checked against the spec's input contract.

A request names a value per input (or gives the one input's value): one sample or a list of
samples, in the forms its input's kind takes (handlers/kinds/). The request becomes `parts`: runs
of samples of one shape, each stacked with a leading batch dimension. An attention mask the request
leaves out is all ones. Every refusal is a RequestError naming the input and the rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from handlers.errors import RequestError
from handlers.kinds import kind_of
from handlers.kinds.tensor import Rows, TensorKind, parse_dtype
from handlers.spec import ModelSpec

__all__ = ["InputCodec", "Part", "parse_dtype"]

Part = dict[str, np.ndarray]  # input name -> (n, *sample shape), one shape for all n samples


class InputCodec:
    def __init__(self, spec: ModelSpec, files_dir: Path | None = None) -> None:
        self.spec = spec
        self.inputs = {i.name: i for i in spec.inputs}
        self.mask = spec.io.attention_mask
        self.kinds: dict[str, TensorKind] = {
            i.name: kind_of(spec, i, files_dir, contract=self.describe) for i in spec.inputs}
        # a model of one input and no mask: a request's value needs no matching with others
        self._only = spec.inputs[0].name if len(spec.inputs) == 1 and not self.mask else None

    def parts(self, values: dict[str, Any], *, label: str | None = None,
              batched: bool = False) -> list[Part]:
        """The request's samples as parts. `values` maps input names to raw values, each one
        sample or a list of samples (always a list when `batched`); `label` names the value in
        messages for one-input requests (e.g. "`inputs`")."""
        if self._only is not None and len(values) == 1 and self._only in values:
            return _runs({self._only: self.samples(self._only, values[self._only],
                                                   batched=batched, label=label)}, [self._only])
        self._check_names(values)
        samples = {name: self.samples(name, value, batched=batched,
                                      label=label if len(self.inputs) == 1 else None)
                   for name, value in values.items()}
        if self.mask and self.mask not in samples:
            samples[self.mask] = self._ones_like(samples)
        counts = {name: len(rows) for name, rows in samples.items()}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"`{n}` {c}" for n, c in counts.items())
            raise RequestError(f"the inputs hold different numbers of samples ({listed}); send one "
                               "value per input for each sample")
        return _runs(samples, [i.name for i in self.spec.inputs])

    def samples(self, name: str, value: Any, *, batched: bool = False,
                label: str | None = None) -> Rows:
        """One input's samples: an (n, ...) array, or a list of arrays of different lengths."""
        return self.kinds[name].samples(value, label or f"input `{name}`", batched=batched)

    def describe(self) -> str:
        """The contract, for messages."""
        if len(self.inputs) == 1:
            (only,) = self.inputs.values()
            if not only.dynamic:
                shape = list(only.shape)
                return (f"expected one sample of shape {shape} or a list of samples of shape [N, "
                        f"{', '.join(map(str, shape))}], dtype {only.dtype}, "
                        f'e.g. {{"inputs": {_zeros(shape)}}}')
        return "expected " + "; ".join(i.describe() for i in self.inputs.values())

    # ---- the request as a whole ----

    def _check_names(self, values: dict[str, Any]) -> None:
        unknown = sorted(set(values) - set(self.inputs))
        missing = sorted(set(self.inputs) - set(values) - {self.mask})
        if unknown or missing:
            problems = ([f"unknown input {', '.join(f'`{n}`' for n in unknown)}"] if unknown else []) + \
                       ([f"missing input {', '.join(f'`{n}`' for n in missing)}"] if missing else [])
            raise RequestError(f"{'; '.join(problems)}; this model takes "
                               f"{', '.join(f'`{n}`' for n in self.inputs)}"
                               + (f" (`{self.mask}` optional: all ones)" if self.mask else ""))

    def _ones_like(self, samples: dict[str, Any]) -> list[np.ndarray]:
        """An all-ones mask per sample, as long as the first input with as many dynamic dims."""
        mask = self.inputs[self.mask]
        source = next(name for name, i in self.inputs.items()
                      if name != self.mask and len(i.dynamic) == len(mask.dynamic) and name in samples)
        rows = samples[source]
        model_input = self.inputs[source]
        shapes = [tuple(row.shape[d] for d in model_input.dynamic) for row in rows]
        return [np.ones(mask.filled(lengths), dtype=parse_dtype(mask)) for lengths in shapes]


def _runs(samples: dict[str, list[np.ndarray] | np.ndarray], order: list[str]) -> list[Part]:
    """Consecutive samples of one shape (over every input) stacked into parts."""
    names = [n for n in order if n in samples]
    if all(isinstance(samples[n], np.ndarray) for n in names):
        return [{n: samples[n] for n in names}]  # each input came as one array: one shape
    count = len(samples[names[0]])
    parts: list[Part] = []
    start = 0
    for end in range(1, count + 1):
        if end == count or any(samples[n][end].shape != samples[n][start].shape for n in names):
            parts.append({n: np.stack([samples[n][i] for i in range(start, end)]) for n in names})
            start = end
    return parts


def _zeros(shape: Iterable[int]) -> str:
    """A short literal example of the input shape, for error messages."""
    text = "0.0"
    for size in reversed(list(shape)):
        text = "[" + ", ".join([text] * min(size, 2)) + (", ...]" if size > 2 else "]")
    return text
