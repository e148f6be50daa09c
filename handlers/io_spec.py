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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from handlers.io_outputs import (BATCHING, NAME, OutputSpec, outputs_to_data, parse_batching,
                                 parse_label_output, parse_labels, parse_outputs, parse_top_k)

if TYPE_CHECKING:
    from handlers.kinds.image import ImageSpec
    from handlers.kinds.text import TokenizerSpec

__all__ = ["DTYPES", "INPUT_TYPES", "BATCHING", "IO_KEYS", "InputSpec", "OutputSpec", "IOSpec",
           "parse_io", "io_to_dict"]

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")
INPUT_TYPES = ("tensor", "image")  # handlers/kinds/: a tokenizer's input is text


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int | None, ...]  # one sample, without the batch dimension; None: dynamic
    dtype: str = "float32"  # one of DTYPES
    name: str = "input"
    max: tuple[int, ...] = ()  # the upper bound of each dynamic dimension, in order
    min: tuple[int, ...] = ()  # the lower bound of each (1 when not given)
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
    def lower(self) -> tuple[int, ...]:
        """The lower bound of each dynamic dimension."""
        return self.min or (1,) * len(self.max)

    @property
    def max_shape(self) -> tuple[int, ...]:
        """The largest sample: every dynamic dimension at its bound."""
        return self.filled(self.max)

    def describe(self) -> str:
        dims = ", ".join("N" if size is None else str(size) for size in self.shape)
        bounds = ", ".join(f"N<={m}" for m in self.max)
        return f"`{self.name}`: shape [{dims}]{f' ({bounds})' if bounds else ''}, {self.dtype}"


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
    per_sample, outputs = parse_outputs(raw.get("outputs"), inputs, problems)
    io = IOSpec(inputs=inputs, outputs=outputs,
                attention_mask=_attention_mask(raw.get("attention_mask"), inputs, problems),
                tokenizer=_tokenizer(raw.get("tokenizer"), inputs, problems),
                labels=parse_labels(raw.get("labels"), problems),
                top_k=parse_top_k(raw.get("top_k"), problems),
                label_output=parse_label_output(raw.get("label_output"), outputs, problems),
                batching=parse_batching(raw.get("batching", "stack"), problems),
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
    allowed = {"shape", "dtype", "max", "min", "pad", "type", "image"} | ({"name"} if named else set())
    for key in sorted(set(value) - allowed, key=str):
        problems.append(f"unknown key `{where}.{key}`: remove it or fix its spelling (allowed: "
                        f"{', '.join(sorted(allowed))})")
    name = value.get("name", "input")
    if named and "name" not in value:
        problems.append(f"`{where}` needs a `name` (the forward() argument it feeds)")
    elif not (isinstance(name, str) and NAME.match(name)):
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
    lows = _lower_bounds(value.get("min"), bounds, where, problems)
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
                     min=lows, pad=pad, type=str(kind), image=image)


def _lower_bounds(value: Any, bounds: list[int], where: str, problems: list[str]) -> tuple:
    if value is None:
        return ()
    value = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(value, list) and len(value) == len(bounds) and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= b
            for v, b in zip(value, bounds))):
        problems.append(f"`{where}.min` {value!r} must give, for each dynamic dimension, a "
                        f"lower bound from 1 to its max ({bounds}), e.g. min: [32, 32]")
        return ()
    return tuple(value)

def _image(value: Any, shape: list, where: str, problems: list[str]) -> ImageSpec:
    from handlers.kinds.image import parse_image

    return parse_image(value, shape, where, problems)


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


def _image_settings(image: ImageSpec) -> dict[str, Any]:
    from handlers.kinds.image import image_to_dict

    return image_to_dict(image)


def io_to_dict(io: IOSpec) -> dict[str, Any]:
    """The contract as plain YAML-ready data (the archive's spec.yaml)."""
    data: dict[str, Any] = {
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype,
                    **({"max": list(i.max)} if i.max else {}), **({"min": list(i.min)} if i.min else {}),
                    **({"pad": i.pad} if i.pad else {}),
                    **({"type": i.type} if i.type != "tensor" else {}),
                    **({"image": _image_settings(i.image)} if i.image else {})} for i in io.inputs],
        "outputs": outputs_to_data(io)}
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


