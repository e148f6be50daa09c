"""The spec's input and output contract: named inputs (dynamic dimensions bounded by `max`),
named outputs, the attention mask, the tokenizer, classification settings.

    inputs:                              # or `input: {shape: [1, 8, 8]}` for one tensor input
      - {name: input_ids, dtype: int64, shape: [null], max: [128]}
      - {name: attention_mask, dtype: int64, shape: [null], max: [128]}
    attention_mask: attention_mask       # batches of mixed lengths are padded, this input masks
    tokenizer: {file: tokenizer.json, input: input_ids}   # strings for input_ids are tokenized
    outputs:
      - {name: logits}
      - {name: token_states, follows: input_ids}   # cut back to each request's own length
    labels: [negative, positive]
    top_k: 1
    label_output: logits

Detection and segmentation models take a list of images of their own sizes and answer each with
outputs of a size its content decides (torchvision's List[Tensor] -> List[Dict[str, Tensor]]):

    input: {type: image, shape: [3, null, null], max: [1024, 1024], image: {...}}
    batching: list                       # forward() takes a list of per-sample tensors
    outputs: {per_sample: true, names: [boxes, scores, labels]}   # one mapping (or tuple) each
    labels: [background, person, car]    # names for the integer class ids of the `labels` output
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from handlers.kinds.image import ImageSpec
    from handlers.kinds.text import TokenizerSpec

__all__ = ["DTYPES", "INPUT_TYPES", "BATCHING", "IO_KEYS", "InputSpec", "OutputSpec", "IOSpec",
           "parse_io", "io_to_dict"]

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")
INPUT_TYPES = ("tensor", "image")  # handlers/kinds/: a tokenizer's input is text
BATCHING = ("stack", "list")  # forward() takes (N, ...) tensors, or a list of N per-sample ones
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int | None, ...]  # one sample, without the batch dimension; None: dynamic
    dtype: str = "float32"  # one of DTYPES
    name: str = "input"
    max: tuple[int, ...] = ()  # the upper bound of each dynamic dimension, in order
    pad: float = 0  # the value batches of mixed lengths are padded with (with an attention mask)
    type: str = "tensor"  # one of INPUT_TYPES
    image: ImageSpec | None = None  # for type: image (handlers/kinds/image.py)

    @property
    def dynamic(self) -> tuple[int, ...]:
        """Positions of the dynamic dimensions in `shape`."""
        return tuple(i for i, size in enumerate(self.shape) if size is None)

    def filled(self, lengths) -> tuple[int, ...]:
        """The sample shape with its dynamic dimensions at `lengths`, in order."""
        sizes = iter(lengths)
        return tuple(next(sizes) if size is None else size for size in self.shape)

    @property
    def max_shape(self) -> tuple[int, ...]:
        """The largest sample: every dynamic dimension at its bound."""
        return self.filled(self.max)

    def describe(self) -> str:
        dims = ", ".join("N" if size is None else str(size) for size in self.shape)
        bounds = ", ".join(f"N<={m}" for m in self.max)
        return f"`{self.name}`: shape [{dims}]{f' ({bounds})' if bounds else ''}, {self.dtype}"


@dataclass(frozen=True)
class OutputSpec:
    name: str
    follows: str | None = None  # an input whose dynamic dimensions this output's follow


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...] = (OutputSpec("output"),)
    attention_mask: str | None = None
    tokenizer: TokenizerSpec | None = None
    labels: tuple[str, ...] | None = None
    top_k: int | None = None
    label_output: str | None = None  # the output labels apply to (default: `labels`, else the first)
    batching: str = "stack"  # one of BATCHING
    per_sample: bool = False  # forward() returns one mapping or tuple of outputs per sample

    @property
    def classified_output(self) -> str | None:
        if self.labels is None:
            return None
        names = [o.name for o in self.outputs]
        return self.label_output or ("labels" if "labels" in names else names[0])


IO_KEYS = ("input", "inputs", "outputs", "attention_mask", "tokenizer", "labels", "top_k",
           "label_output", "batching")


def parse_io(raw: dict, problems: list[str]) -> IOSpec:
    """The contract from a spec mapping's io keys; every problem appended to `problems`."""
    if ("input" in raw) == ("inputs" in raw):
        problems.append("give exactly one of `input` (one tensor) and `inputs` (a list of named "
                        "inputs), e.g. input: {shape: [1, 8, 8]}")
        inputs: tuple[InputSpec, ...] = ()
    elif "input" in raw:
        inputs = tuple(i for i in [_input(raw["input"], "input", problems)] if i)
    else:
        inputs = _inputs(raw["inputs"], problems)
    per_sample, outputs = _outputs(raw.get("outputs"), inputs, problems)
    io = IOSpec(inputs=inputs, outputs=outputs,
                attention_mask=_attention_mask(raw.get("attention_mask"), inputs, problems),
                tokenizer=_tokenizer(raw.get("tokenizer"), inputs, problems),
                labels=_labels(raw.get("labels"), problems),
                top_k=_top_k(raw.get("top_k"), problems),
                label_output=_label_output(raw.get("label_output"), outputs, problems),
                batching=_batching(raw.get("batching", "stack"), problems),
                per_sample=per_sample)
    if (io.top_k or io.label_output) and io.labels is None:
        problems.append("`top_k` and `label_output` need `labels`")
    if io.batching == "list" and io.attention_mask:
        problems.append("`batching: list` passes each sample at its own length, so there is no "
                        "padding to mask: drop `attention_mask`, or use batching: stack")
    return io


def _inputs(value: Any, problems: list[str]) -> tuple[InputSpec, ...]:
    if not (isinstance(value, list) and value):
        problems.append(f"`inputs` must be a non-empty list of inputs, e.g. [{{name: input_ids, "
                        f"dtype: int64, shape: [null], max: [128]}}], got {value!r}")
        return ()
    parsed = [_input(item, f"inputs[{i}]", problems, named=True) for i, item in enumerate(value)]
    names = [i.name for i in parsed if i]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"input name {name!r} is used twice in `inputs`")
    return tuple(i for i in parsed if i)


def _input(value: Any, where: str, problems: list[str], *, named: bool = False) -> InputSpec | None:
    if not isinstance(value, dict):
        problems.append(f"`{where}` must be a mapping with `shape` and `dtype`, got {value!r}")
        return None
    allowed = {"shape", "dtype", "max", "pad", "type", "image"} | ({"name"} if named else set())
    for key in sorted(set(value) - allowed, key=str):
        problems.append(f"unknown key `{where}.{key}`: remove it or fix its spelling (allowed: "
                        f"{', '.join(sorted(allowed))})")
    name = value.get("name", "input")
    if named and "name" not in value:
        problems.append(f"`{where}` needs a `name` (the forward() argument it feeds)")
    elif not (isinstance(name, str) and _NAME.match(name)):
        problems.append(f"`{where}.name` {name!r} must start with a letter or '_' and hold only "
                        "letters, digits, '_', '-' and '.'")
    shape = value.get("shape")
    valid_shape = isinstance(shape, list) and bool(shape) and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in shape)
    if not valid_shape:
        problems.append(f"`{where}.shape` {shape!r} must be a list of positive integers (null for a "
                        "dynamic dimension) without the batch dimension, e.g. [1, 8, 8] or [null]")
        shape = []
    dtype = value.get("dtype", "float32")
    if dtype not in DTYPES:
        problems.append(f"`{where}.dtype` {dtype!r} is not one of {', '.join(DTYPES)}")
    dynamic = sum(1 for d in shape if d is None)
    bounds = value.get("max", [])
    bounds = [bounds] if isinstance(bounds, int) and not isinstance(bounds, bool) else bounds
    if not (isinstance(bounds, list) and len(bounds) == dynamic and all(
            isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in bounds)):
        problems.append(f"`{where}.max` {value.get('max')!r} must give a positive upper bound for "
                        f"each of its {dynamic} dynamic dimensions, in order (e.g. max: [512])"
                        if dynamic else f"`{where}.max` is only for dynamic (null) dimensions")
        bounds = [1] * dynamic
    pad = value.get("pad", 0)
    if isinstance(pad, bool) or not isinstance(pad, (int, float)):
        problems.append(f"`{where}.pad` {pad!r} must be a number")
        pad = 0
    kind = value.get("type", "tensor")
    if kind not in INPUT_TYPES:
        problems.append(f"`{where}.type` {kind!r} is not one of {', '.join(INPUT_TYPES)}")
    image = _image(value.get("image"), shape, where, problems) if kind == "image" else None
    if kind != "image" and "image" in value:
        problems.append(f"`{where}.image` is for inputs of type: image")
    return InputSpec(shape=tuple(shape), dtype=str(dtype), name=str(name), max=tuple(bounds),
                     pad=pad, type=str(kind), image=image)


def _image(value: Any, shape: list, where: str, problems: list[str]) -> ImageSpec:
    from handlers.kinds.image import parse_image

    return parse_image(value, shape, where, problems)


def _outputs(value: Any, inputs: tuple[InputSpec, ...],
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
    if not (isinstance(name, str) and _NAME.match(name)):
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


def _batching(value: Any, problems: list[str]) -> str:
    if value not in BATCHING:
        problems.append(f"`batching` {value!r} is not one of {', '.join(BATCHING)} (list: "
                        "forward() takes a list of per-sample tensors, each of its own size)")
        return "stack"
    return value


def _attention_mask(value: Any, inputs: tuple[InputSpec, ...], problems: list[str]) -> str | None:
    if value is None:
        return None
    mask = next((i for i in inputs if i.name == value), None)
    if mask is None:
        problems.append(f"`attention_mask` {value!r} is not one of the inputs "
                        f"({', '.join(i.name for i in inputs)})")
        return None
    if not mask.dynamic:
        problems.append(f"`attention_mask` {value!r} has no dynamic dimension to mask")
    if mask.dtype.startswith("float"):
        problems.append(f"`attention_mask` {value!r} must be an integer or bool input")
    return value


def _tokenizer(value: Any, inputs: tuple[InputSpec, ...], problems: list[str]) -> TokenizerSpec | None:
    if value is None:
        return None
    from handlers.kinds.text import parse_tokenizer

    return parse_tokenizer(value, inputs, problems)


def _labels(value: Any, problems: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        problems.append(f"`labels` must be a non-empty list of class names, got {value!r}")
        return None
    return tuple(str(label) for label in value)


def _top_k(value: Any, problems: list[str]) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        problems.append(f"`top_k` {value!r} must be a positive integer")
        return None
    return value


def _label_output(value: Any, outputs: tuple[OutputSpec, ...], problems: list[str]) -> str | None:
    if value is not None and value not in [o.name for o in outputs]:
        problems.append(f"`label_output` {value!r} is not one of the outputs "
                        f"({', '.join(o.name for o in outputs)})")
        return None
    return value


def _image_settings(image: ImageSpec) -> dict[str, Any]:
    from handlers.kinds.image import image_to_dict

    return image_to_dict(image)


def io_to_dict(io: IOSpec) -> dict[str, Any]:
    """The contract as plain YAML-ready data (the archive's spec.yaml)."""
    data: dict[str, Any] = {
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype,
                    **({"max": list(i.max)} if i.max else {}), **({"pad": i.pad} if i.pad else {}),
                    **({"type": i.type} if i.type != "tensor" else {}),
                    **({"image": _image_settings(i.image)} if i.image else {})} for i in io.inputs],
        "outputs": _outputs_to_data(io)}
    if io.attention_mask:
        data["attention_mask"] = io.attention_mask
    if io.tokenizer:
        data["tokenizer"] = {"file": io.tokenizer.file, "input": io.tokenizer.input,
                             "add_special_tokens": io.tokenizer.add_special_tokens}
    if io.labels is not None:
        data["labels"] = list(io.labels)
    for key in ("top_k", "label_output"):
        if getattr(io, key) is not None:
            data[key] = getattr(io, key)
    if io.batching != "stack":
        data["batching"] = io.batching
    return data


def _outputs_to_data(io: IOSpec) -> list | dict:
    names = [{"name": o.name, **({"follows": o.follows} if o.follows else {})} for o in io.outputs]
    return {"per_sample": True, "names": names} if io.per_sample else names

