"""The request protocols the handler answers, each decoded and answered per request.

    ours        {"inputs": <the one input's value>}  or  {"inputs": {"<name>": <value>, ...}}
             -> {"outputs": <rows>} or {"outputs": {"<name>": <rows>}}, "predictions" with labels
    multipart   one part per named input (JSON, text or raw bytes)  -> as ours
    KServe v1   {"instances": [<sample, or {"<name>": <value>}>, ...]}
             -> {"predictions": [<per instance>]}
    KServe v2   the Open Inference Protocol: {"id"?, "inputs": [{"name", "shape", "datatype",
                "data"}], "outputs"?: [{"name", "parameters"?}], "parameters"?}, JSON tensors or
                the binary extension (Inference-Header-Content-Length)
             -> {"model_name", "model_version", "id"?, "outputs": [tensors]}, binary on request

A value is one sample or a list of samples; see handlers/inputs.py for its forms. TorchServe sends
`/predictions/<name>`, `/v1/models/<name>:predict` and `/v2/models/<name>/infer` to the same worker
without saying which was called, so the body tells them apart: a list of tensor objects under
`inputs` is the Open Inference Protocol.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from handlers.errors import RequestError
from handlers.images import CONTENT_TYPES
from handlers.inputs import InputCodec, Part
from handlers.spec import ModelSpec

__all__ = ["Answer", "Reply", "Decoded", "Protocols", "error_reply", "BINARY_HEADER"]

BINARY_HEADER = "inference-header-content-length"
# Open Inference Protocol datatypes and their numpy dtypes.
_OIP_DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
               "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
               "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
_LABEL_TENSORS = ("label", "probability", "probabilities")


@dataclass(frozen=True)
class Answer:
    """One request's share of a batch: its rows of every output, and its predictions."""
    outputs: dict[str, Any]  # output name -> (n, ...) array, or a list of arrays per sample
    predictions: list[dict[str, Any]] | None  # per sample, with labels


@dataclass(frozen=True)
class Reply:
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Decoded:
    parts: list[Part]  # the request's samples, see handlers/inputs.py
    encode: Callable[[Answer], Reply]  # its answer in its own protocol


_ERROR_TYPES = {400: "BadRequest", 500: "InternalServerError"}


def error_reply(status: int, message: str) -> Reply:
    """An error body: TorchServe's error shape, plus `error`, which KServe's clients read."""
    return _json({"code": status, "type": _ERROR_TYPES[status], "message": message,
                  "error": message})


class Protocols:
    def __init__(self, spec: ModelSpec, codec: InputCodec, processor: Any = None) -> None:
        self.spec, self.codec, self.processor = spec, codec, processor
        self.input_names = [i.name for i in spec.inputs]
        self.output_names = [o.name for o in spec.outputs]
        images = [i.name for i in spec.inputs if i.type == "image"]
        self.image_input = images[0] if len(images) == 1 and len(spec.inputs) == 1 else None

    def _image_body_input(self, content_type: str) -> str:
        """The input a raw body goes to: the one image input, sent as image/jpeg, png or webp."""
        if self.image_input is None:
            raise RequestError(f"a body of type {content_type or '(none)'} can only go to a model "
                               "with one image input; send JSON or multipart/form-data")
        kind = CONTENT_TYPES.get(content_type)
        allowed = self.spec.inputs[0].image.formats
        if kind not in allowed:
            raise RequestError(f"Content-Type {content_type or '(none)'} is not an image type this "
                               f"model takes; send the image as "
                               f"{', '.join('image/' + f for f in allowed)}, in multipart/form-data, "
                               'or as {"inputs": {"b64": ...}} in JSON')
        return self.image_input

    def decode(self, request: dict, headers: dict[str, Any]) -> Decoded:
        """One TorchServe request (its parameters and headers) as parts plus the way to answer.
        Raises RequestError."""
        fields = {k: v for k, v in request.items() if k not in ("body", "data")}
        if fields:
            return self._multipart(fields, headers)
        body = request.get("body", request.get("data"))
        length = _header(headers, BINARY_HEADER)
        if length is not None and isinstance(body, (bytes, bytearray)):
            return self._oip(*_split_binary(bytes(body), length))
        content_type = str((headers.get("body") or headers.get("data") or {}).get(
            "content-type", "")).split(";")[0].strip().lower()
        if content_type.startswith("image/"):
            return Decoded(self._parts({self._image_body_input(content_type): body}), self._our_reply)
        try:
            payload = _json_body(body)
        except RequestError:
            if self.image_input is None:
                raise
            self._image_body_input(content_type)  # raises: the rule for a raw image body
            raise
        if isinstance(payload, dict) and _is_oip(payload.get("inputs")):
            return self._oip(payload, b"")
        if isinstance(payload, dict) and "instances" in payload:
            return self._kserve_v1(payload["instances"])
        if isinstance(payload, dict) and "inputs" in payload:
            return Decoded(self._parts(self._named(payload["inputs"]), label="`inputs`"),
                           self._our_reply)
        raise RequestError(f'expected a JSON object {{"inputs": ...}}; {self.codec.describe()}')

    # ---- ours, multipart, KServe v1 ----

    def _named(self, value: Any) -> dict[str, Any]:
        """{"inputs": value} for one input, or {"inputs": {name: value}} for any number (after
        the spec's processor, which may map what clients send onto the inputs)."""
        if self.processor is not None:
            value = self.processor.decode(value)
        if isinstance(value, dict) and set(value) != {"b64"} and (
                len(self.input_names) > 1 or set(value) <= set(self.input_names)):
            return value  # by name; the codec names any unknown or missing input
        if len(self.input_names) > 1:
            raise RequestError(f'this model takes named inputs: {{"inputs": {{'
                               f'{", ".join(f"{chr(34)}{n}{chr(34)}: ..." for n in self.input_names)}'
                               f"}}}}; {self.codec.describe()}")
        return {self.input_names[0]: value}

    def _parts(self, values: dict[str, Any], *, label: str | None = None,
               batched: bool = False) -> list[Part]:
        return self.codec.parts(values, label=label, batched=batched)

    def _multipart(self, fields: dict[str, Any], headers: dict[str, Any]) -> Decoded:
        if len(fields) > len(self.input_names):  # refused before any part is parsed
            raise RequestError(f"the form has {len(fields)} parts; this model takes at most "
                               f"{len(self.input_names)}, one per input "
                               f"({', '.join(self.input_names)})")
        values = {}
        for name, value in fields.items():
            content_type = str((headers.get(name) or {}).get("content-type", "")).lower()
            values[name] = _part_value(name, value, content_type)
        return Decoded(self._parts(self._named(values)), self._our_reply)

    def _our_reply(self, answer: Answer) -> Reply:
        outputs = self._encoded_outputs(answer)
        if len(self.output_names) == 1 and not self.processor:
            outputs = outputs[self.output_names[0]]  # one output: its rows, as before outputs had names
        body: dict[str, Any] = {"outputs": outputs}
        if answer.predictions is not None:
            body["predictions"] = answer.predictions
        return _json(body)

    def _kserve_v1(self, instances: Any) -> Decoded:
        if not (isinstance(instances, list) and instances):
            raise RequestError(f"`instances` must be a non-empty list of samples; "
                               f"{self.codec.describe()}")
        if self.processor is not None:
            instances = [self.processor.decode(i) for i in instances]
        if len(self.input_names) == 1 and not all(
                isinstance(i, dict) and set(i) == {self.input_names[0]} for i in instances):
            values = {self.input_names[0]: instances}
        elif all(isinstance(i, dict) for i in instances):
            values = {n: [i.get(n) for i in instances] for n in instances[0]}
        else:
            raise RequestError(f"each instance must name this model's inputs: "
                               f'{{"instances": [{{{", ".join(repr(n) + ": ..." for n in self.input_names)}}}]}}')
        return Decoded(self._parts(values, label="`instances`", batched=True), self._v1_reply)

    def _v1_reply(self, answer: Answer) -> Reply:
        outputs = self._encoded_outputs(answer)
        count = len(next(iter(outputs.values())))
        rows = [{name: values[i] for name, values in outputs.items()} for i in range(count)]
        if len(self.output_names) == 1 and not self.processor:
            rows = [row[self.output_names[0]] for row in rows]
        if answer.predictions is None:
            return _json({"predictions": rows})
        if not isinstance(rows[0], dict):
            rows = [{"outputs": row} for row in rows]
        return _json({"predictions": [{**p, **row} for p, row in zip(answer.predictions, rows)]})

    def _encoded_outputs(self, answer: Answer) -> dict[str, Any]:
        return self.processor.encode(answer.outputs) if self.processor else answer.outputs

    # ---- the Open Inference Protocol ----

    def _oip(self, payload: Any, binary: bytes) -> Decoded:
        if not isinstance(payload, dict):
            raise RequestError(f"a v2 request is a JSON object, got {type(payload).__name__}")
        _parameters(payload, "the request")
        tensors = payload.get("inputs")
        if not _is_oip(tensors):
            raise RequestError('a v2 request needs "inputs": a list of tensors with "name", '
                               '"shape", "datatype" and "data" (or binary_data_size)')
        values, offset = {}, 0
        for tensor in tensors:
            name, value, used = self._oip_tensor(tensor, binary, offset)
            values[name] = value
            offset += used
        if offset != len(binary):
            raise RequestError(f"the binary part holds {len(binary)} bytes after the JSON header "
                               f"but the inputs' binary_data_size add up to {offset}")
        parts = self._parts(values, batched=True)
        return Decoded(parts, self._oip_encoder(payload))

    def _oip_tensor(self, tensor: dict, binary: bytes, offset: int) -> tuple[str, Any, int]:
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
        size = _parameters(tensor, f"input tensor {name!r}").get("binary_data_size")
        if size is not None and not (isinstance(size, int) and not isinstance(size, bool)
                                     and size >= 0):
            raise RequestError(f"input tensor {name!r}: binary_data_size {size!r:.40} must be a "
                               "whole number of bytes")
        model_input = next(i for i in self.spec.inputs if i.name == name)
        text = name == self.codec.text_input
        if datatype == "BYTES":
            image = model_input.type == "image"
            if not (text or image):
                raise RequestError(f"input tensor {name!r} is BYTES but `{name}` takes "
                                   f"{model_input.dtype} numbers")
            items = _bytes_items(binary[offset:offset + size], name) if size is not None else \
                tensor.get("data")
            count = math.prod(shape)
            if not isinstance(items, list) or len(items) != count:
                raise RequestError(f"input tensor {name!r} has {len(items) if isinstance(items, list) else 0} "
                                   f"strings but its shape {shape} holds {count}")
            if image:  # encoded images: raw in binary tensors, base64 strings in JSON ones
                items = [{"b64": item} if isinstance(item, str) else item for item in items]
            return name, items, size or 0
        array = _oip_array(tensor, name, shape, datatype, model_input.dtype, binary, offset, size)
        return name, array, size or 0

    def _oip_encoder(self, payload: dict) -> Callable[[Answer], Reply]:
        requested = _requested(payload.get("outputs"), self._oip_names())
        binary_default = bool(_parameters(payload, "the request").get("binary_data_output"))
        request_id = payload.get("id")

        def encode(answer: Answer) -> Reply:
            body: dict[str, Any] = {"model_name": self.spec.name,
                                    "model_version": self.spec.version}
            if request_id is not None:
                body["id"] = request_id
            chunks: list[bytes] = []
            tensors = []
            for name, array in self._oip_tensors(answer):
                wanted = requested.get(name, binary_default) if requested else binary_default
                if requested and name not in requested:
                    continue
                tensors.append(_oip_output(name, array, chunks if wanted else None))
            body["outputs"] = tensors
            if not chunks:
                return _json(body)
            header = orjson.dumps(body)
            return Reply(header + b"".join(chunks), "application/octet-stream",
                         {"Inference-Header-Content-Length": str(len(header))})

        return encode

    def _oip_names(self) -> list[str]:
        return self.output_names + (list(_LABEL_TENSORS) if self.spec.labels else [])

    def _oip_tensors(self, answer: Answer) -> list[tuple[str, np.ndarray]]:
        tensors = []
        for name in self.output_names:
            value = answer.outputs[name]
            if isinstance(value, list):  # cannot happen for one rectangular v2 request
                raise RequestError(f"output {name!r} has rows of different lengths")
            tensors.append((name, value))
        if answer.predictions:
            predictions = answer.predictions
            tensors.append(("label", np.array([p["label"] for p in predictions], dtype=object)))
            tensors.append(("probability", np.array([p["probability"] for p in predictions],
                                                    dtype=np.float32)))
            tensors.append(("probabilities", np.array(
                [list(p["probabilities"].values()) for p in predictions], dtype=np.float32)))
        return tensors


# ---- helpers ----

def _json(body: dict) -> Reply:
    # Bytes go out as they are; TorchServe would re-encode a dict with json and indent=2.
    return Reply(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def _header(headers: dict[str, Any], name: str) -> str | None:
    return next((str(v) for k, v in headers.items() if k.lower() == name and isinstance(v, str)),
                None)


def _json_body(body: Any) -> Any:
    """The parsed body: from bytes, or as it is where TorchServe parsed it already."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise RequestError(f"request body is not valid JSON ({err}); send UTF-8 JSON "
                               '(no NaN or Infinity) with {"inputs": ...}') from None
    return body


def _part_value(name: str, value: Any, content_type: str) -> Any:
    """A multipart part: JSON when it says so (or parses as JSON), text for text/*, else bytes."""
    if not isinstance(value, (bytes, bytearray)):
        return value
    if content_type.startswith("application/json") or not content_type:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            if content_type:
                raise RequestError(f"part `{name}` says application/json but is not valid "
                                   "JSON") from None
    if content_type.startswith("text/"):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(f"part `{name}` is not UTF-8 text ({err})") from None
    return bytes(value)


def _parameters(entry: dict, what: str) -> dict:
    """An OIP object's `parameters`: a mapping when present."""
    parameters = entry.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise RequestError(f"`parameters` of {what} must be a JSON object, got {parameters!r:.80}")
    return parameters


def _is_oip(inputs: Any) -> bool:
    return isinstance(inputs, list) and bool(inputs) and all(
        isinstance(tensor, dict) and "datatype" in tensor for tensor in inputs)


def _split_binary(body: bytes, length: str) -> tuple[dict, bytes]:
    """The JSON header and the binary tensors of a binary-extension request."""
    try:
        size = int(length)
    except ValueError:
        raise RequestError(f"Inference-Header-Content-Length {length!r} is not a number") from None
    if not 0 < size <= len(body):
        raise RequestError(f"Inference-Header-Content-Length {size} does not fit a body of "
                           f"{len(body)} bytes")
    try:
        return orjson.loads(body[:size]), body[size:]
    except orjson.JSONDecodeError as err:
        raise RequestError(f"the first {size} bytes (Inference-Header-Content-Length) are not the "
                           f"JSON header ({err})") from None


def _oip_array(tensor: dict, name: str, shape: list[int], datatype: Any, declared: str,
               binary: bytes, offset: int, size: int | None) -> np.ndarray:
    if datatype not in _OIP_DTYPES:
        raise RequestError(f"input tensor {name!r} has datatype {datatype!r}; use one of "
                           f"{', '.join(_OIP_DTYPES)}")
    dtype = np.dtype(_OIP_DTYPES[datatype])
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


def _bytes_items(data: bytes, name: str) -> list[bytes]:
    """BYTES in the binary extension: each element a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise RequestError(f"input tensor {name!r}: its binary BYTES end inside a length prefix")
        (length,) = struct.unpack_from("<I", data, offset)
        if offset + 4 + length > len(data):
            raise RequestError(f"input tensor {name!r}: a BYTES element claims {length} bytes, "
                               "more than its binary_data_size holds")
        items.append(data[offset + 4:offset + 4 + length])
        offset += 4 + length
    return items


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
    return {o["name"]: bool(_parameters(o, f"output {o['name']!r}").get("binary_data"))
            for o in outputs}


def _oip_output(name: str, array: np.ndarray, chunks: list[bytes] | None) -> dict:
    if array.dtype == object:
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        tensor = {"name": name, "datatype": "BYTES", "shape": list(array.shape)}
        if chunks is None:
            return {**tensor, "data": [v.decode() for v in items]}
        data = b"".join(struct.pack("<I", len(v)) + v for v in items)
    else:
        datatype = next(k for k, v in _OIP_DTYPES.items() if np.dtype(v) == array.dtype)
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if chunks is None:
            return {**tensor, "data": array.reshape(-1)}
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    chunks.append(data)
    return {**tensor, "parameters": {"binary_data_size": len(data)}}

