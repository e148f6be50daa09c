"""The output half of the spec's contract: what forward() returns, named (`outputs`, in order, or
`{per_sample: true, names: [...]}` for one mapping or tuple per sample), how samples reach it
(`batching`), and the classification settings (`labels`, `top_k`, `label_output`). Parsed for
handlers/io_spec.py, whose IOSpec holds the result."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from handlers.io_spec import IOSpec, InputSpec

__all__ = ["OutputSpec", "BATCHING", "NAME", "parse_outputs", "parse_batching", "parse_labels",
           "parse_top_k", "parse_label_output", "outputs_to_data"]

BATCHING = ("stack", "list")  # forward() takes (N, ...) tensors, or a list of N per-sample ones
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")  # an input or output name


@dataclass(frozen=True)
class OutputSpec:
    name: str
    follows: str | None = None  # an input whose dynamic dimensions this output's follow


def parse_outputs(value: Any, inputs: tuple[InputSpec, ...],
             problems: list[str]) -> tuple[bool, tuple[OutputSpec, ...]]:
    """(per sample, the outputs) from `outputs`: a list of names or {name, follows} in the order
    forward() returns them, or {per_sample: true, names: [...]} for one mapping or tuple each."""
    if value is None:
        return False, (OutputSpec("output"),)
    per_sample = False
    if isinstance(value, dict):
        for key in sorted(set(value) - {"per_sample", "names"}, key=str):
            problems.append(f"unknown key `outputs.{key}` (allowed: per_sample, names)")
        per_sample = value.get("per_sample", False)
        if not isinstance(per_sample, bool):
            problems.append(f"`outputs.per_sample` {per_sample!r} must be true or false")
            per_sample = False
        value = value.get("names")
    if not (isinstance(value, list) and value and all(isinstance(o, (dict, str)) for o in value)):
        problems.append(f"`outputs` must be a list of output names or {{name, follows}} mappings, "
                        f"in the order forward() returns them (or {{per_sample: true, names: "
                        f"[...]}} for one mapping per sample), got {value!r}")
        return per_sample, (OutputSpec("output"),)
    outputs = [_output(item, i, inputs, problems) for i, item in enumerate(value)]
    outputs = [o for o in outputs if o is not None]
    names = [o.name for o in outputs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"output name {name!r} is used twice in `outputs`")
    return per_sample, tuple(outputs) or (OutputSpec("output"),)


def _output(item: Any, i: int, inputs: tuple[InputSpec, ...],
            problems: list[str]) -> OutputSpec | None:
    item = {"name": item} if isinstance(item, str) else item
    for key in sorted(set(item) - {"name", "follows"}, key=str):
        problems.append(f"unknown key `outputs[{i}].{key}` (allowed: name, follows)")
    name, follows = item.get("name"), item.get("follows")
    if not (isinstance(name, str) and NAME.match(name)):
        problems.append(f"`outputs[{i}].name` {name!r} must be a name such as logits")
        return None
    source = next((model_input for model_input in inputs if model_input.name == follows), None)
    if follows is not None and source is None:
        problems.append(f"`outputs[{i}].follows` {follows!r} is not an input; it names the input "
                        f"whose dynamic dimensions the output follows "
                        f"({', '.join(model_input.name for model_input in inputs)})")
        follows = None
    elif source is not None and source.image is not None and (source.image.resize or
                                                             source.image.center_crop):
        problems.append(f"`outputs[{i}]` follows image input {follows!r}, which is resized or "
                        "cropped, so the output would not come back at the request's own size: "
                        f"let the image keep its size (shape [{source.shape[0]}, null, null] with "
                        "max, no image.resize or image.center_crop)")
    return OutputSpec(name, follows)


def parse_batching(value: Any, problems: list[str]) -> str:
    if value not in BATCHING:
        problems.append(f"`batching` {value!r} is not one of {', '.join(BATCHING)} (list: "
                        "forward() takes a list of per-sample tensors, each of its own size)")
        return "stack"
    return value


def parse_labels(value: Any, problems: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        problems.append(f"`labels` must be a non-empty list of class names, got {value!r}")
        return None
    return tuple(str(label) for label in value)


def parse_top_k(value: Any, problems: list[str]) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        problems.append(f"`top_k` {value!r} must be a positive integer")
        return None
    return value


def parse_label_output(value: Any, outputs: tuple[OutputSpec, ...], problems: list[str]) -> str | None:
    if value is not None and value not in [o.name for o in outputs]:
        problems.append(f"`label_output` {value!r} is not one of the outputs "
                        f"({', '.join(o.name for o in outputs)})")
        return None
    return value


def outputs_to_data(io: IOSpec) -> list | dict:
    names = [{"name": o.name, **({"follows": o.follows} if o.follows else {})} for o in io.outputs]
    return {"per_sample": True, "names": names} if io.per_sample else names
