"""Numeric inputs, and what every kind shares: a value is one sample or a list of samples, as
numbers (nested lists), base64 (`{"b64": ...}`, KServe's convention), raw little-endian bytes (a
multipart part, a v2 binary tensor) or a v2 tensor already shaped. Each sample is checked (rank,
fixed dimensions, dynamic dimensions within `max`, finite floats); every refusal is a RequestError
naming the input and the rule.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from handlers.errors import RequestError

if TYPE_CHECKING:
    import torch

    from handlers.io_spec import InputSpec
    from handlers.spec import ModelSpec

__all__ = ["TensorKind", "Rows", "parse_dtype", "pad_concat", "is_b64", "is_binary"]

Rows = list[np.ndarray] | np.ndarray  # an (n, ...) array, or one array per sample of its own shape


def parse_dtype(model_input: InputSpec) -> np.dtype:
    """What request values for an input are parsed to: floats as float32 (numpy has no bfloat16,
    and float16 parsing is slow; the model's cast follows), others as declared."""
    return np.dtype(np.float32) if model_input.dtype.startswith(("float", "bfloat")) \
        else np.dtype(model_input.dtype)


class TensorKind:
    """A numeric input. `contract` describes the model's whole input contract, for messages."""

    takes_bytes_elements = False  # v2 BYTES tensors
    body_types: tuple[str, ...] = ()  # the content types of raw request bodies it takes
    noun = "sample"  # what one sample of it is called in messages

    def __init__(self, spec: ModelSpec, model_input: InputSpec,
                 contract: Callable[[], str] = lambda: "") -> None:
        self.spec, self.input, self.contract = spec, model_input, contract
        self.dtype = parse_dtype(model_input)
        self.pad_value = 0 if model_input.name == spec.io.attention_mask else model_input.pad

    @property
    def byte_limit(self) -> int:
        """The most bytes one encoded sample can need: its largest sample in raw values."""
        return math.prod(self.input.max_shape) * max(self.dtype.itemsize, _raw_dtype(self.input).itemsize)

    # ---- a request's value ----

    def samples(self, value: Any, what: str, *, batched: bool) -> Rows:
        """The value's samples, checked. Raises RequestError."""
        if (isinstance(value, list) and not value) or (
                isinstance(value, np.ndarray) and value.ndim and not value.shape[0]):
            raise RequestError(f"{what} holds no {self.noun}s; send at least one {self.noun}")
        rows = self.rows(value, what, batched)
        for shape in [rows.shape[1:]] if isinstance(rows, np.ndarray) else [r.shape for r in rows]:
            self._check_shape(shape, what)
        self.check(rows, what)
        return rows

    def rows(self, value: Any, what: str, batched: bool) -> Rows:
        if isinstance(value, np.ndarray):  # a v2 tensor, already shaped
            return self._batched(value, what, batched)
        if is_binary(value):
            return [self._from_bytes(self.binary(value, what), what)]
        if isinstance(value, list) and value and is_binary(value[0]) and all(
                is_binary(v) for v in value):
            return [self._from_bytes(self.binary(v, what), what) for v in value]
        try:
            array = np.asarray(value, dtype=self.dtype)
        except (TypeError, ValueError, OverflowError) as err:
            if isinstance(value, list) and self.input.dynamic and "inhomogeneous" in str(err):
                return [self._one_sample(v, what) for v in value]  # ragged samples
            raise RequestError(f"{what} is not a numeric array ({err}); {self.contract()}") from None
        return self._batched(array, what, batched)

    def one_sample_each(self, values: list, *, batched: bool) -> np.ndarray | None:
        """Many requests' values as one (n, ...) array when each is exactly one valid sample of
        this fixed-shape input; else None, and each value goes through `samples`, which says what
        is wrong with it. The same conversion and rules as `samples`, in one numpy call for all
        requests instead of several per request. `batched`: the values are arrays with a batch
        dimension (v2 tensors), else nested lists (our JSON)."""
        if self.input.dynamic:
            return None
        shape = (len(values), *self.input.shape)
        try:
            if batched:
                if not all(isinstance(v, np.ndarray) and v.dtype == self.dtype and len(v) == 1
                           for v in values):
                    return None
                rows = np.concatenate(values)
            else:
                if not all(isinstance(v, list) for v in values):  # bytes, b64: their own path
                    return None
                rows = np.asarray(values, dtype=self.dtype)
        except (TypeError, ValueError, OverflowError):
            return None
        if rows.shape != shape:
            return None
        try:
            self.check(rows, "")
        except RequestError:
            return None
        return rows

    def check(self, rows: Rows, what: str) -> None:
        """The kind's rule for values: floats must be finite."""
        if self.dtype.kind == "f" and not all(
                np.isfinite(r).all() for r in ([rows] if isinstance(rows, np.ndarray) else rows)):
            raise RequestError(f"{what} holds NaN or infinity; send finite numbers")

    def takes_body(self, content_type: str) -> bool:
        """Whether a raw request body of `content_type` is a value of this input."""
        return False

    def bytes_elements(self, items: list, name: str) -> list:
        """A v2 BYTES tensor's elements as values `rows` takes."""
        raise RequestError(f"input tensor {name!r} is BYTES but `{name}` takes "
                           f"{self.input.dtype} numbers")

    def binary(self, value: Any, what: str) -> bytes:
        """Raw bytes, or base64 decoded; either refused before any work when longer than one
        sample can need."""
        raw = isinstance(value, (bytes, bytearray))
        encoded = value if raw else value.get("b64")
        limit, unit = self.byte_limit, "bytes"
        if isinstance(encoded, str) and not raw:
            limit, unit = (limit + 2) // 3 * 4 + 4, "base64 characters"
        if isinstance(encoded, (str, bytes, bytearray)) and len(encoded) > limit:
            raise RequestError(f"{what} is {len(encoded):,} {unit}, more than one sample of "
                               f"`{self.input.name}` can need ({limit:,}); send one sample per value")
        if raw:
            return bytes(value)
        if not isinstance(encoded, str):
            raise RequestError(f'{what}: `b64` must be a base64 string, e.g. {{"b64": "AAAA"}}')
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(f"{what}: `b64` is not valid base64 ({err})") from None

    # ---- golden samples ----

    def golden(self, shape: tuple[int, ...], batch: int, generator: torch.Generator) -> torch.Tensor:
        """A seeded batch of `shape` samples (before the model's cast): floats in [0, 1), integers
        0 or 1, an attention mask all ones."""
        import torch

        if self.input.name == self.spec.io.attention_mask:
            return torch.ones((batch, *shape), dtype=torch.int64)
        if self.dtype.kind == "f":
            return torch.rand((batch, *shape), generator=generator, dtype=torch.float32)
        return torch.randint(0, 2, (batch, *shape), generator=generator)

    # ---- helpers ----

    def _batched(self, array: np.ndarray, what: str, batched: bool) -> np.ndarray:
        rank = len(self.input.shape)
        if array.ndim == rank and not batched:
            return array[np.newaxis]
        if array.ndim == rank + 1 and len(array):
            return array
        raise RequestError(f"{what} has shape {list(array.shape)}; {self.contract()}")

    def _one_sample(self, value: Any, what: str) -> np.ndarray:
        try:
            array = np.asarray(value, dtype=self.dtype)
        except (TypeError, ValueError, OverflowError) as err:
            raise RequestError(f"{what} is not a numeric array ({err}); {self.contract()}") from None
        if array.ndim != len(self.input.shape):
            raise RequestError(f"{what} has a sample of shape {list(array.shape)}; {self.contract()}")
        return array

    def _check_shape(self, shape: tuple[int, ...], what: str) -> None:
        bounds = iter(zip(self.input.lower, self.input.max))
        for axis, (size, declared) in enumerate(zip(shape, self.input.shape)):
            if declared is None:
                low, bound = next(bounds)
                if size > bound:
                    raise RequestError(f"{what} has length {size} in dimension {axis}, over its "
                                       f"max of {bound} (the spec's `max`); send at most {bound}")
                if size == 0:
                    raise RequestError(f"{what} is empty in dimension {axis}; send at least one")
                if size < low:
                    raise RequestError(f"{what} has length {size} in dimension {axis}, under its "
                                       f"min of {low} (the spec's `min`); send at least {low}")
            elif size != declared:
                raise RequestError(f"{what} has shape {list(shape)}; {self.contract()}")

    def _from_bytes(self, data: bytes, what: str) -> np.ndarray:
        """Raw little-endian values of the input's dtype; one dynamic dimension is inferred."""
        dtype = _raw_dtype(self.input)
        if len(data) % dtype.itemsize:
            raise RequestError(f"{what} holds {len(data)} bytes, not a whole number of "
                               f"{dtype} values")
        flat = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
        fixed = math.prod(d for d in self.input.shape if d is not None)
        whole = flat.size == fixed if not self.input.dynamic else flat.size and not flat.size % fixed
        if len(self.input.dynamic) > 1 or not whole:
            raise RequestError(f"{what}: {flat.size} {dtype} values do not make a sample of shape "
                               f"{list(self.input.shape)}")
        shape = self.input.filled([flat.size // fixed] * len(self.input.dynamic))
        return flat.reshape(shape).astype(self.dtype, copy=False)


def pad_concat(arrays: list[np.ndarray], shape: tuple[int, ...], value: float) -> np.ndarray:
    """(n_i, ...) arrays one after another in one (sum n_i, *shape) array, each padded at the end
    of every dimension with `value`: how batches of mixed lengths are padded, at build and in
    the worker."""
    out = np.full((sum(len(a) for a in arrays), *shape), value, dtype=arrays[0].dtype)
    row = 0
    for array in arrays:
        out[(slice(row, row + len(array)), *(slice(0, s) for s in array.shape[1:]))] = array
        row += len(array)
    return out


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def is_binary(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray)) or (isinstance(value, dict) and is_b64(value))


def _raw_dtype(model_input: InputSpec) -> np.dtype:
    """The values raw bytes hold: the declared dtype (numpy has no bfloat16: those come as
    float32)."""
    return np.dtype({"bfloat16": "float32"}.get(model_input.dtype, model_input.dtype))
