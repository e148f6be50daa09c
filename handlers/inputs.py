"""Request values in, model input arrays out, checked against the spec's input contract.

A request names a value per input (or gives the one input's value): one sample or a list of
samples, as numbers (nested lists), a string for the tokenizer's input, base64 (`{"b64": ...}`,
KServe's convention) or raw bytes (a multipart part, a v2 BYTES or binary tensor); for an image
input, encoded images (handlers/images.py), decoded and preprocessed per sample. Each sample is
checked (rank, fixed dimensions, dynamic dimensions within `max`) and the request becomes `parts`:
runs of samples of one shape, each stacked with a leading batch dimension. An attention mask the
request leaves out is all ones. Every refusal is a RequestError naming the input and the rule.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from handlers.errors import RequestError
from handlers.images import preprocess
from handlers.io_spec import InputSpec
from handlers.spec import ModelSpec

__all__ = ["InputCodec", "Part", "parse_dtype"]

Part = dict[str, np.ndarray]  # input name -> (n, *sample shape), one shape for all n samples


def parse_dtype(model_input: InputSpec) -> np.dtype:
    """What request values for an input are parsed to: floats as float32 (numpy has no bfloat16,
    and float16 parsing is slow; the model's cast follows), others as declared."""
    return np.dtype(np.float32) if model_input.dtype.startswith(("float", "bfloat")) \
        else np.dtype(model_input.dtype)


class InputCodec:
    def __init__(self, spec: ModelSpec, files_dir: Path | None = None) -> None:
        self.spec = spec
        self.inputs = {i.name: i for i in spec.inputs}
        self.mask = spec.io.attention_mask
        self.tokenizer = _load_tokenizer(spec, files_dir) if spec.io.tokenizer else None
        self.text_input = spec.io.tokenizer.input if spec.io.tokenizer else None
        self.text_chars = text_char_limit(self.tokenizer, self.inputs[self.text_input].max[0]) \
            if self.tokenizer else None
        self.byte_limits = {name: self._byte_limit(i) for name, i in self.inputs.items()}

    # ---- a request's values ----

    def parts(self, values: dict[str, Any], *, label: str | None = None,
              batched: bool = False) -> list[Part]:
        """The request's samples as parts. `values` maps input names to raw values, each one
        sample or a list of samples (always a list when `batched`); `label` names the value in
        messages for one-input requests (e.g. "`inputs`")."""
        self._check_names(values)
        samples = {name: self.samples(self.inputs[name], value, batched=batched,
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

    def samples(self, model_input: InputSpec, value: Any, *, batched: bool = False,
                label: str | None = None) -> list[np.ndarray] | np.ndarray:
        """One input's samples: an (n, ...) array, or a list of arrays of different lengths."""
        what = label or f"input `{model_input.name}`"
        rows = self._rows(model_input, value, what, batched)
        # one array: one shape for all its rows; a list: each sample its own
        for shape in [rows.shape[1:]] if isinstance(rows, np.ndarray) else [r.shape for r in rows]:
            self._check_shape(model_input, shape, what)
        if model_input.type == "tensor" and parse_dtype(model_input).kind == "f" and not all(
                np.isfinite(r).all() for r in ([rows] if isinstance(rows, np.ndarray) else rows)):
            raise RequestError(f"{what} holds NaN or infinity; send finite numbers")
        if model_input.name == self.text_input:
            self._check_token_ids(rows, what)
        return rows

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

    # ---- one value ----

    def _rows(self, model_input: InputSpec, value: Any, what: str,
              batched: bool) -> list[np.ndarray] | np.ndarray:
        if isinstance(value, np.ndarray):  # a v2 tensor, already shaped
            return self._batched(model_input, value, what, batched)
        if model_input.type == "image" and (_is_binary(value) or isinstance(value, list) and value
                                            and all(_is_binary(v) for v in value)):
            images = value if isinstance(value, list) else [value]
            return [preprocess(self._binary(model_input, image, what), model_input, what)
                    for image in images]
        if self._is_text(model_input, value):
            texts = [value] if isinstance(value, (str, bytes, dict)) else value
            return [self._tokenize(self._text(t, what), what) for t in texts]
        if _is_binary(value):
            return [self._from_bytes(model_input, self._binary(model_input, value, what), what)]
        if isinstance(value, list) and value and all(_is_binary(v) for v in value):
            return [self._from_bytes(model_input, self._binary(model_input, v, what), what)
                    for v in value]
        try:
            array = np.asarray(value, dtype=parse_dtype(model_input))
        except (TypeError, ValueError, OverflowError) as err:
            if isinstance(value, list) and model_input.dynamic and "inhomogeneous" in str(err):
                return [self._one_sample(model_input, v, what) for v in value]  # ragged samples
            raise RequestError(f"{what} is not a numeric array ({err}); {self.describe()}") from None
        return self._batched(model_input, array, what, batched)

    def _batched(self, model_input: InputSpec, array: np.ndarray, what: str,
                 batched: bool) -> np.ndarray:
        rank = len(model_input.shape)
        if array.ndim == rank and not batched:
            return array[np.newaxis]
        if array.ndim == rank + 1 and len(array):
            return array
        raise RequestError(f"{what} has shape {list(array.shape)}; {self.describe()}")

    def _one_sample(self, model_input: InputSpec, value: Any, what: str) -> np.ndarray:
        try:
            array = np.asarray(value, dtype=parse_dtype(model_input))
        except (TypeError, ValueError, OverflowError) as err:
            raise RequestError(f"{what} is not a numeric array ({err}); {self.describe()}") from None
        if array.ndim != len(model_input.shape):
            raise RequestError(f"{what} has a sample of shape {list(array.shape)}; "
                               f"{self.describe()}")
        return array

    def _check_shape(self, model_input: InputSpec, shape: tuple[int, ...], what: str) -> None:
        bounds = iter(model_input.max)
        for axis, (size, declared) in enumerate(zip(shape, model_input.shape)):
            if declared is None:
                bound = next(bounds)
                if size > bound:
                    raise RequestError(f"{what} has length {size} in dimension {axis}, over its "
                                       f"max of {bound} (the spec's `max`); send at most {bound}")
                if size == 0:
                    raise RequestError(f"{what} is empty in dimension {axis}; send at least one")
            elif size != declared:
                raise RequestError(f"{what} has shape {list(shape)}; {self.describe()}")

    def _from_bytes(self, model_input: InputSpec, data: bytes, what: str) -> np.ndarray:
        """Raw little-endian values of the input's dtype; one dynamic dimension is inferred."""
        dtype = _raw_dtype(model_input)
        if len(data) % dtype.itemsize:
            raise RequestError(f"{what} holds {len(data)} bytes, not a whole number of "
                               f"{dtype} values")
        flat = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
        fixed = math.prod(d for d in model_input.shape if d is not None)
        whole = flat.size == fixed if not model_input.dynamic else flat.size and not flat.size % fixed
        if len(model_input.dynamic) > 1 or not whole:
            raise RequestError(f"{what}: {flat.size} {dtype} values do not make a sample of shape "
                               f"{list(model_input.shape)}")
        shape = [flat.size // fixed if d is None else d for d in model_input.shape]
        return flat.reshape(shape).astype(parse_dtype(model_input), copy=False)

    # ---- text ----

    def _is_text(self, model_input: InputSpec, value: Any) -> bool:
        if model_input.name != self.text_input:
            return False
        items = value if isinstance(value, list) else [value]
        return bool(items) and all(isinstance(v, (str, bytes)) or _is_b64(v) for v in items)

    def _text(self, value: str | bytes | dict, what: str) -> str:
        if isinstance(value, str):
            return value
        try:
            return self._binary(self.inputs[self.text_input], value, what).decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(f"{what} is not UTF-8 text ({err}); send text as a JSON string or "
                               "UTF-8 bytes") from None

    def _tokenize(self, text: str, what: str) -> np.ndarray:
        """Token ids, for a text no longer than `max` tokens can need (checked first: tokenizing
        costs about a second per MB)."""
        if len(text) > self.text_chars:
            raise RequestError(f"{what} is {len(text):,} characters, more than its max of "
                               f"{self.inputs[self.text_input].max[0]} tokens can hold with this "
                               f"tokenizer (at most {self.text_chars:,} characters); send a "
                               "shorter text")
        settings = self.spec.io.tokenizer
        ids = self.tokenizer.encode(text, add_special_tokens=settings.add_special_tokens).ids
        return np.asarray(ids, dtype=parse_dtype(self.inputs[settings.input]))

    def _check_token_ids(self, rows: list[np.ndarray] | np.ndarray, what: str) -> None:
        """Ids a client sent for the tokenizer's input lie in its vocabulary (an id past the
        embedding would fail the forward pass of the whole batch)."""
        size = self.tokenizer.get_vocab_size()
        for row in [rows] if isinstance(rows, np.ndarray) else rows:
            if row.size and (row.min() < 0 or row.max() >= size):
                raise RequestError(f"{what} holds token id {int(row.max() if row.max() >= size else row.min())}"
                                   f", outside the tokenizer's vocabulary of {size} (ids 0 to "
                                   f"{size - 1}); send ids from the same tokenizer, or the text")

    # ---- limits before work ----

    def _byte_limit(self, model_input: InputSpec) -> int:
        """The most bytes one encoded sample of the input can need: an image's max_bytes, a
        text's characters in UTF-8, a tensor's largest sample in raw values."""
        if model_input.type == "image":
            return model_input.image.max_bytes
        if model_input.name == self.text_input:
            return 4 * self.text_chars
        return math.prod(model_input.max_shape) * max(parse_dtype(model_input).itemsize,
                                                      np.dtype(_raw_dtype(model_input)).itemsize)

    def _binary(self, model_input: InputSpec, value: Any, what: str) -> bytes:
        """Raw bytes, or base64 decoded; either refused before any work when longer than one
        sample of the input can need."""
        limit = self.byte_limits[model_input.name]
        raw = isinstance(value, (bytes, bytearray))
        encoded = value if raw else value.get("b64")
        if isinstance(encoded, str) and not raw:
            limit_encoded, unit = (limit + 2) // 3 * 4 + 4, "base64 characters"
        else:
            limit_encoded, unit = limit, "bytes"
        if isinstance(encoded, (str, bytes, bytearray)) and len(encoded) > limit_encoded:
            raise RequestError(f"{what} is {len(encoded):,} {unit}, more than one sample of "
                               f"`{model_input.name}` can need ({limit_encoded:,}); send one "
                               "sample per value")
        return _binary(value, what)

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
        return [np.ones(_fill(mask.shape, lengths), dtype=parse_dtype(mask)) for lengths in shapes]


def text_char_limit(tokenizer, max_tokens: int) -> int:
    """The longest text `max_tokens` tokens can need: each token at most the vocabulary's longest
    token, with as many characters again for the spaces and punctuation between them. A longer
    text is refused before tokenizing (a word the vocabulary lacks is one [UNK] however long)."""
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return (max_tokens + 1) * 2 * (longest + 1)


def _raw_dtype(model_input: InputSpec) -> np.dtype:
    """The values raw bytes hold: the declared dtype (numpy has no bfloat16: those come as
    float32)."""
    return np.dtype({"bfloat16": "float32"}.get(model_input.dtype, model_input.dtype))


def _fill(shape: tuple[int | None, ...], lengths: tuple[int, ...]) -> list[int]:
    sizes = iter(lengths)
    return [next(sizes) if size is None else size for size in shape]


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


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _is_binary(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray)) or _is_b64(value)


def _binary(value: Any, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value.get("b64"), str):
        raise RequestError(f'{what}: `b64` must be a base64 string, e.g. {{"b64": "AAAA"}}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"{what}: `b64` is not valid base64 ({err})") from None


def _load_tokenizer(spec: ModelSpec, files_dir: Path | None):
    from tokenizers import Tokenizer

    base = files_dir if files_dir is not None else spec.source.parent
    return Tokenizer.from_file(str(base / spec.io.tokenizer.file))


def _zeros(shape: Iterable[int]) -> str:
    """A short literal example of the input shape, for error messages."""
    text = "0.0"
    for size in reversed(list(shape)):
        text = "[" + ", ".join([text] * min(size, 2)) + (", ...]" if size > 2 else "]")
    return text
