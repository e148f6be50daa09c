"""How a model is called and what it returns, in the spec's names: named input tensors in, named
output tensors out. `mar build`, the golden check and the handler all go through `ModelIO`.

forward() receives the inputs by keyword when its signature names every input (several inputs),
else by position in the spec's order. It may return one tensor, a tuple or list (named by
`outputs` in order), or a mapping such as a Hugging Face ModelOutput (the `outputs` names picked).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from handlers.errors import SpecError
from handlers.spec import ModelSpec

__all__ = ["ModelIO"]


class ModelIO:
    def __init__(self, spec: ModelSpec, model: nn.Module) -> None:
        self.spec, self.model = spec, model
        self.input_names = [i.name for i in spec.inputs]
        self.output_names = [o.name for o in spec.outputs]
        self.by_keyword = len(self.input_names) > 1 and _takes_names(model, self.input_names)

    def __call__(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run the model (in inference mode) and name its outputs."""
        with torch.inference_mode():
            if self.by_keyword:
                returned = self.model(**{name: inputs[name] for name in self.input_names})
            else:
                returned = self.model(*(inputs[name] for name in self.input_names))
        return self.name_outputs(returned)

    def name_outputs(self, returned: object) -> dict[str, Tensor]:
        """The model's return value as {output name: tensor}. Raises MarError when it does not
        match the spec's `outputs`."""
        names = self.output_names
        if isinstance(returned, Tensor):
            values = [returned]
        elif isinstance(returned, (tuple, list)):
            values = list(returned)
        elif isinstance(returned, Mapping):
            absent = [n for n in names if n not in returned]
            if absent:
                raise SpecError(f"{self.spec.source}: forward() returned a mapping with keys "
                               f"{', '.join(map(str, returned))}, without {', '.join(absent)}. "
                               "Name the outputs to serve under `outputs:` in the spec.")
            values = [returned[n] for n in names]
        else:
            raise SpecError(f"{self.spec.source}: forward() returned {type(returned).__name__}; "
                           "serve models that return tensors, tuples or mappings of tensors.")
        if len(values) != len(names) or not all(isinstance(v, Tensor) for v in values):
            raise SpecError(f"{self.spec.source}: forward() returned {len(values)} values "
                           f"({', '.join(type(v).__name__ for v in values)}) but the spec names "
                           f"{len(names)} outputs ({', '.join(names)}). List one name per returned "
                           "tensor under `outputs:`, in order.")
        return dict(zip(names, values))


def _takes_names(model: nn.Module, names: list[str]) -> bool:
    forward = getattr(model, "_orig_mod", model).forward  # a torch.compile'd model wraps it
    parameters = inspect.signature(forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return all(name in parameters for name in names)
