"""KServe v2, the Open Inference Protocol (`POST /v2/models/<name>/infer`): JSON tensors, or the
binary extension (handlers/protocols/oip_wire.py), in either direction.

    {"id"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name",
     "parameters"?}], "parameters"?}
        -> {"model_name", "model_version", "id"?, "outputs": [tensors]}, binary on request

A list of tensor objects under `inputs` is what tells it from our protocol. A request's tensors hold
its samples along their first dimension. With labels, `label`, `probability` and `probabilities`
are tensors too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from handlers.errors import RequestError
from handlers.protocols.base import (Answer, Decoded, Encoder, Protocol, Reply, Request,
                                     json_reply)
from handlers.protocols.oip_wire import (BINARY_HEADER, DATATYPES, bytes_items, parameters,
                                         split_binary, tensor_entry)

__all__ = ["OIPBinary", "OIPJSON"]

_LABEL_TENSORS = ("label", "probability", "probabilities")


class _OIP(Protocol):
    batched = True  # a tensor holds a request's samples along its first dimension
    label = None

    def tensors(self, payload: Any, binary: bytes) -> Decoded:
        values, encode = self.tensor_values(payload, binary)
        parts = self.codec.parts(values, batched=True)
        samples = sum(len(next(iter(part.values()))) for part in parts)
        if self.spec.io.per_sample and samples > 1:
            raise RequestError(f"the request holds {samples} samples; this model's outputs differ "
                               "in size from sample to sample, and a v2 tensor has one shape, so "
                               "send one sample per v2 request (they are batched together)")
        return Decoded(parts, encode)

    def tensor_values(self, payload: Any, binary: bytes) -> tuple[dict[str, Any], Encoder]:
        """The request's tensors by input name, as arrays, and its encoder."""
        if not isinstance(payload, dict):
            raise RequestError(f"a v2 request is a JSON object, got {type(payload).__name__}")
        parameters(payload, "the request")
        tensors = payload.get("inputs")
        if not _is_oip(tensors):
            raise RequestError('a v2 request needs "inputs": a list of tensors with "name", '
                               '"shape", "datatype" and "data" (or binary_data_size)')
        values, offset = {}, 0
        for tensor in tensors:
            name, value, used = self._tensor(tensor, binary, offset)
            values[name] = value
            offset += used
        if offset != len(binary):
            raise RequestError(f"the binary part holds {len(binary)} bytes after the JSON header "
                               f"but the inputs' binary_data_size add up to {offset}")
        return values, self._encoder(payload)

    def _tensor(self, tensor: dict, binary: bytes, offset: int) -> tuple[str, Any, int]:
        name = tensor.get("name")
        if len(self.input_names) == 1 and isinstance(name, str):
            name = self.input_names[0]  # one input: any tensor name will do (e.g. "input-0")
        if not isinstance(name, str) or (name not in self.input_names
                                         and name != self.spec.io.attention_mask):
            raise RequestError(f"unknown input tensor {name!r}; this model takes "
                               f"{', '.join(self.input_names)}")
        shape, datatype = tensor.get("shape"), tensor.get("datatype")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                                and d >= 0 for d in shape)):
            raise RequestError(f"input tensor {name!r} has shape {shape!r}; a shape is a list of "
                               "non-negative integers, e.g. [1, 1, 8, 8]")
        size = parameters(tensor, f"input tensor {name!r}").get("binary_data_size")
        if size is not None and not (isinstance(size, int) and not isinstance(size, bool)
                                     and size >= 0):
            raise RequestError(f"input tensor {name!r}: binary_data_size {size!r:.40} must be a "
                               "whole number of bytes")
        kind = self.codec.kinds[name]
        if datatype == "BYTES":
            return name, self._bytes(tensor, kind, name, shape, binary[offset:offset + size]
                                     if size is not None else None), size or 0
        array = _array(tensor, name, shape, datatype, kind.input.dtype, binary, offset, size)
        return name, array, size or 0

    def _bytes(self, tensor: dict, kind, name: str, shape: list[int], binary: bytes | None) -> list:
        if not kind.takes_bytes_elements:
            return kind.bytes_elements([], name)  # raises: the kind's rule
        items = bytes_items(binary, name) if binary is not None else tensor.get("data")
        count = math.prod(shape)
        if not isinstance(items, list) or len(items) != count:
            raise RequestError(f"input tensor {name!r} has {len(items) if isinstance(items, list) else 0} "
                               f"strings but its shape {shape} holds {count}")
        return kind.bytes_elements(items, name)

    def _encoder(self, payload: dict) -> Encoder:
        requested = _requested(payload.get("outputs"), self._names())
        binary_default = bool(parameters(payload, "the request").get("binary_data_output"))
        request_id = payload.get("id")

        def encode(answer: Answer) -> Reply:
            body: dict[str, Any] = {"model_name": self.spec.name,
                                    "model_version": self.spec.version}
            if request_id is not None:
                body["id"] = request_id
            chunks: list[bytes] = []
            tensors = []
            for name, array in self._tensors(answer):
                if requested and name not in requested:
                    continue
                wanted = requested.get(name, binary_default) if requested else binary_default
                tensors.append(tensor_entry(name, array, chunks if wanted else None))
            body["outputs"] = tensors
            if not chunks:
                return json_reply(body)
            header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
            return Reply(header + b"".join(chunks), "application/octet-stream",
                         {"Inference-Header-Content-Length": str(len(header))})

        return encode

    def _names(self) -> list[str]:
        return self.output_names + (list(_LABEL_TENSORS) if self.spec.labels else [])

    def _tensors(self, answer: Answer) -> list[tuple[str, np.ndarray]]:
        tensors = []
        for name in self.output_names:
            value = answer.outputs[name]
            if isinstance(value, list) and self.spec.io.per_sample:
                value = value[0]  # one sample per v2 request (checked at decoding), its own shape
            elif isinstance(value, list):  # cannot happen for one rectangular v2 request
                raise RequestError(f"output {name!r} has rows of different lengths")
            tensors.append((name, value))
        if answer.predictions is not None:
            tensors += answer.predictions.tensors()
        return tensors


class OIPBinary(_OIP):
    def matches(self, request: Request) -> bool:
        return request.header(BINARY_HEADER) is not None and isinstance(request.body, (bytes, bytearray))

    def values(self, request: Request) -> tuple[dict[str, Any], Encoder]:
        return self.tensor_values(*split_binary(bytes(request.body), request.header(BINARY_HEADER)))

    def decode(self, request: Request) -> Decoded:
        return self.tensors(*split_binary(bytes(request.body), request.header(BINARY_HEADER)))


class OIPJSON(_OIP):
    def matches(self, request: Request) -> bool:
        return request.object_with("inputs") and _is_oip(request.payload["inputs"])

    def decode(self, request: Request) -> Decoded:
        return self.tensors(request.payload, b"")


def _is_oip(inputs: Any) -> bool:
    return isinstance(inputs, list) and bool(inputs) and all(
        isinstance(tensor, dict) and "datatype" in tensor for tensor in inputs)


def _array(tensor: dict, name: str, shape: list[int], datatype: Any, declared: str,
           binary: bytes, offset: int, size: int | None) -> np.ndarray:
    if datatype not in DATATYPES:
        raise RequestError(f"input tensor {name!r} has datatype {datatype!r}; use one of "
                           f"{', '.join(DATATYPES)}")
    dtype = np.dtype(DATATYPES[datatype])
    if _kind(dtype) != _kind(np.dtype("float32" if declared == "bfloat16" else declared)):
        raise RequestError(f"input tensor {name!r} is {datatype} but `{name}` takes {declared} "
                           "values; send the datatype of its kind (FP32/FP16 for floats, INT64/"
                           "INT32 for integers, BOOL)")
    count = math.prod(shape)  # exact: numpy's int64 product wraps for huge declared shapes
    if size is not None:
        if size != count * dtype.itemsize or offset + size > len(binary):
            raise RequestError(f"input tensor {name!r}: binary_data_size {size} does not match its "
                               f"shape {shape} of {datatype} ({count * dtype.itemsize} bytes)"
                               + ("" if offset + size <= len(binary) else
                                  f", and only {len(binary) - offset} bytes follow"))
        return np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count,
                             offset=offset).reshape(shape)
    data = tensor.get("data")
    if data is None:
        raise RequestError(f"input tensor {name!r} has no `data`; send its values as a (flat or "
                           "nested) JSON list, or binary with binary_data_size")
    try:
        flat = np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, OverflowError) as err:
        raise RequestError(f"input tensor {name!r}: `data` is not a {datatype} array ({err})") from None
    if flat.size != count:
        raise RequestError(f"input tensor {name!r} has {flat.size} values but its shape {shape} "
                           f"holds {count}")
    return flat.reshape(shape)


def _kind(dtype: np.dtype) -> str:
    return "float" if dtype.kind == "f" else "bool" if dtype.kind == "b" else "int"


def _requested(outputs: Any, available: list[str]) -> dict[str, bool]:
    """The output names a v2 request asks for, with whether each is wanted binary ({}: all)."""
    if outputs is None:
        return {}
    if not (isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                              for o in outputs)):
        raise RequestError(f'`outputs` must be a list of {{"name": ...}} objects, got {outputs!r}')
    unknown = sorted({o["name"] for o in outputs} - set(available))
    if unknown:
        raise RequestError(f"requested outputs {unknown} do not exist; this model answers "
                           f"{', '.join(available)}")
    return {o["name"]: bool(parameters(o, f"output {o['name']!r}").get("binary_data"))
            for o in outputs}
