"""The Open Inference Protocol's wire format, for both ends: the worker reads requests and writes
responses with it, and `scripts/client.py` writes requests and reads responses with it.

    {"id"?, "inputs"|"outputs": [{"name", "shape", "datatype", "data" | "parameters":
                                  {"binary_data_size": n}}], "parameters"?}

A binary-extension body is that JSON header, then each binary tensor's bytes in order; the
`Inference-Header-Content-Length` header says where the JSON ends. Numbers are little-endian; a
BYTES element is a 4-byte little-endian length, then its bytes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from handlers.errors import RequestError

__all__ = ["BINARY_HEADER", "DATATYPES", "parameters", "split_binary", "bytes_items",
           "tensor_entry", "datatype_of", "message", "read_tensors"]

BINARY_HEADER = "inference-header-content-length"
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
             "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
             "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


def parameters(entry: dict, what: str) -> dict:
    """An OIP object's `parameters`: a mapping when present. Raises RequestError."""
    found = entry.get("parameters")
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise RequestError(f"`parameters` of {what} must be a JSON object, got {found!r:.80}")
    return found


def split_binary(body: bytes, length: str) -> tuple[Any, bytes]:
    """The parsed JSON header and the binary tensors of a binary-extension body."""
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


def bytes_items(data: bytes, name: str) -> list[bytes]:
    """A binary BYTES tensor's elements."""
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


_DATATYPE_NAMES = {np.dtype(v): k for k, v in DATATYPES.items()}


def datatype_of(dtype: np.dtype) -> str:
    return _DATATYPE_NAMES[dtype]


def tensor_entry(name: str, array: np.ndarray, chunks: list[bytes] | None) -> dict:
    """A tensor's JSON entry: its data inline, or (when `chunks` is a list) its bytes appended to
    `chunks` and their size in its parameters. Object arrays are BYTES."""
    if array.dtype == object:
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        tensor = {"name": name, "datatype": "BYTES", "shape": list(array.shape)}
        if chunks is None:
            return {**tensor, "data": [v.decode() for v in items]}
        data = b"".join(struct.pack("<I", len(v)) + v for v in items)
    else:
        tensor = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if chunks is None:
            return {**tensor, "data": array.reshape(-1)}
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    chunks.append(data)
    return {**tensor, "parameters": {"binary_data_size": len(data)}}


def message(key: str, tensors: dict[str, np.ndarray], *, binary: bool,
            extra: dict | None = None) -> tuple[bytes, dict[str, str]]:
    """A whole body of tensors under `key` ("inputs" for a request, "outputs" for a response)
    and the headers it needs: JSON, or the binary extension."""
    chunks: list[bytes] | None = [] if binary else None
    header = orjson.dumps({**(extra or {}), key: [tensor_entry(name, array, chunks)
                                                  for name, array in tensors.items()]},
                          option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                       "Inference-Header-Content-Length": str(len(header))}


def read_tensors(body: bytes, headers: dict[str, str], key: str = "outputs") -> dict[str, np.ndarray]:
    """The tensors under `key` of a JSON or binary-extension body, by name (the client's side:
    what the server sent is trusted to be well formed)."""
    length = next((v for k, v in headers.items() if k.lower() == BINARY_HEADER), None)
    payload, binary = split_binary(body, length) if length is not None else (orjson.loads(body), b"")
    tensors, offset = {}, 0
    for tensor in payload[key]:
        size = parameters(tensor, tensor["name"]).get("binary_data_size")
        if tensor["datatype"] == "BYTES":
            items = bytes_items(binary[offset:offset + size], tensor["name"]) if size is not None \
                else tensor["data"]
            array = np.array(items, dtype=object).reshape(tensor["shape"])
        elif size is not None:
            array = np.frombuffer(binary, dtype=np.dtype(DATATYPES[tensor["datatype"]]).newbyteorder("<"),
                                  count=math.prod(tensor["shape"]), offset=offset).reshape(tensor["shape"])
        else:
            array = np.asarray(tensor["data"], dtype=DATATYPES[tensor["datatype"]]).reshape(tensor["shape"])
        tensors[tensor["name"]] = array
        offset += size or 0
    return tensors
