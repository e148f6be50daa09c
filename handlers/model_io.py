"""How a model is called and what it returns, in the spec's names: named inputs in, named outputs
out. `mar build`, the golden check and the handler all go through `ModelIO`.

forward() receives the inputs by keyword when its signature names every input (several inputs),
else by position in the spec's order; each input a batch tensor, or with `batching: list` a list
of per-sample tensors. It may return one tensor, a tuple or list (named by `outputs` in order), or
a mapping such as a Hugging Face ModelOutput (the `outputs` names picked); with `outputs:
{per_sample: true, ...}`, one such mapping or tuple per sample (torchvision's List[Dict]).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from handlers.errors import SpecError
from handlers.spec import ModelSpec

__all__ = ["ModelIO", "describe"]

Inputs = Mapping[str, "Tensor | list[Tensor]"]


class ModelIO:
    def __init__(self, spec: ModelSpec, model: nn.Module) -> None:
        self.spec, self.model = spec, model
        self.input_names = [i.name for i in spec.inputs]
        self.output_names = [o.name for o in spec.outputs]
        self.by_keyword = len(self.input_names) > 1 and _takes_names(model, self.input_names)

    def __call__(self, inputs: Inputs) -> dict[str, Tensor | list[Tensor]]:
        """Run the model (in inference mode) and name its outputs: a tensor each, or a list of
        tensors, one per sample, for a per-sample model."""
        with torch.inference_mode():
            if self.by_keyword:
                returned = self.model(**{name: inputs[name] for name in self.input_names})
            else:
                returned = self.model(*(inputs[name] for name in self.input_names))
        return self.name_outputs(returned, samples=_samples(inputs[self.input_names[0]]))

    def name_outputs(self, returned: object, *, samples: int) -> dict[str, Tensor | list[Tensor]]:
        """The model's return value as {output name: tensor (or per-sample list)}. Raises
        SpecError describing what forward() returned, and the spec line that fits it."""
        if self.spec.io.per_sample:
            return self._per_sample(returned, samples)
        # the types first: under torch.export `samples` is symbolic, and comparing a tuple's
        # length with it would fix the batch size
        if isinstance(returned, (list, tuple)) and returned and all(
                isinstance(item, (Mapping, list, tuple)) for item in returned) and \
                len(returned) == samples:
            raise self._refusal(
                f"forward() returned a {type(returned).__name__} of {samples} "
                f"{type(returned[0]).__name__}s, one per sample of the batch; one sample returned "
                f"{describe(returned[0])}", f"outputs: {{per_sample: true, names: "
                f"[{', '.join(_names(returned[0]))}]}}")
        return self._named(returned, "forward()")

    def _per_sample(self, returned: object, samples: int) -> dict[str, list[Tensor]]:
        if not isinstance(returned, (list, tuple)):
            raise self._refusal(f"forward() returned {describe(returned)} for a batch of {samples}, "
                                "not one result per sample", "outputs: "
                                f"[{', '.join(_names(returned))}] (without per_sample)")
        if len(returned) != samples:
            raise self._refusal(f"forward() returned {len(returned)} results for a batch of "
                                f"{samples} samples; with per_sample it returns one per sample, "
                                "in order", None)
        named = [self._named(item, "one sample") for item in returned]
        return {name: [sample[name] for sample in named] for name in self.output_names}

    def _named(self, value: object, who: str) -> dict[str, Tensor]:
        """One result (the batch's, or one sample's) as {name: tensor}."""
        names = self.output_names
        if isinstance(value, Tensor):
            values = [value]
        elif isinstance(value, (tuple, list)):
            values = list(value)
        elif isinstance(value, Mapping):
            absent = [n for n in names if n not in value]
            if absent:
                raise self._refusal(f"{who} returned {describe(value)}, without "
                                    f"{', '.join(absent)}", self._line(_names(value)))
            values = [value[n] for n in names]
        else:
            raise self._refusal(f"{who} returned {describe(value)}; serve models that return "
                                "tensors, tuples or mappings of tensors", None)
        if len(values) != len(names) or not all(isinstance(v, Tensor) for v in values):
            raise self._refusal(f"{who} returned {describe(value)}, {len(values)} value(s), and "
                                f"`outputs` names {len(names)} ({', '.join(names)})",
                                self._line(_names(value)))
        return dict(zip(names, values))

    def _line(self, names: list[str]) -> str:
        listed = ", ".join(names)
        return f"outputs: {{per_sample: true, names: [{listed}]}}" if self.spec.io.per_sample \
            else f"outputs: [{listed}]"

    def _refusal(self, what: str, line: str | None) -> SpecError:
        fix = f" The spec line that fits it: `{line}`." if line else ""
        return SpecError(f"{self.spec.source}: {what}.{fix} Name the outputs to serve under "
                         "`outputs:` (README, The spec).")


def describe(value: object, depth: int = 0) -> str:
    """A returned value for messages: types, keys and shapes."""
    if isinstance(value, Tensor):
        return f"Tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, Mapping) and depth < 2:
        return "{" + ", ".join(f"{k}: {describe(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)) and depth < 2:
        shown = ", ".join(describe(v, depth + 1) for v in value[:4])
        more = f", ... ({len(value)} in all)" if len(value) > 4 else ""
        return f"a {type(value).__name__} ({shown}{more})"
    return type(value).__name__


def _names(value: object) -> list[str]:
    """Output names a result suggests: a mapping's keys, or output_0.. by position."""
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    count = len(value) if isinstance(value, (tuple, list)) else 1
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _samples(value: Tensor | list[Tensor]) -> int:
    return len(value) if isinstance(value, list) else value.shape[0]


def _takes_names(model: nn.Module, names: list[str]) -> bool:
    forward = getattr(model, "_orig_mod", model).forward  # a torch.compile'd model wraps it
    parameters = inspect.signature(forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return all(name in parameters for name in names)
