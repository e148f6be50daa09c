"""The request protocols the handler answers, each decoded and answered per request.

    ours        {"inputs": <one sample, or a list of samples>}
             -> {"outputs": [...], "predictions": [...]}            (predictions with labels)
    KServe v1   {"instances": [<sample>, ...]}
             -> {"predictions": [...]}
    KServe v2   {"id"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}]}
    (Open Inference Protocol, JSON tensors)
             -> {"model_name", "model_version", "id"?, "outputs": [{"name", "shape", "datatype", "data"}]}

TorchServe sends `/predictions/<name>`, `/v1/models/<name>:predict` and `/v2/models/<name>/infer` to
the same worker without saying which was called, so the body tells them apart: a list of tensor
objects under `inputs` is the Open Inference Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from handlers.errors import RequestError

__all__ = ["RequestError", "InputContract", "Decoded", "decode", "error_body"]

# Open Inference Protocol datatypes and the numpy dtype their JSON data parses to.
_OIP_DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
               "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
               "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
_OIP_OUTPUT = "output"  # the model's one output tensor, as named in v2 responses


@dataclass(frozen=True)
class InputContract:
    """What one sample must look like, and how request values are parsed."""
    shape: tuple[int, ...]  # one sample, without the batch dimension
    dtype: str  # the spec's dtype, for messages
    parse_dtype: np.dtype  # what request values are parsed to before the model's cast

    def describe(self) -> str:
        shape = list(self.shape)
        return (f"expected one sample of shape {shape} or a list of samples of shape [N, "
                f"{', '.join(map(str, shape))}], dtype {self.dtype}, "
                f'e.g. {{"inputs": {_zeros(shape)}}}')


# Given a request's outputs (n, ...) and its predictions (or None without labels), its body.
Reply = Callable[[np.ndarray, "list[dict] | None"], dict]


@dataclass(frozen=True)
class Decoded:
    samples: np.ndarray  # (n, *input.shape)
    reply: Reply  # builds this request's response body in its own protocol


def decode(payload: Any, contract: InputContract, *, model: tuple[str, str]) -> Decoded:
    """One parsed request body as samples plus the way to answer it. Raises RequestError.

    `model` is (name, version), which v2 responses carry."""
    if isinstance(payload, dict) and _is_oip(payload.get("inputs")):
        return _decode_oip(payload, contract, model)
    if isinstance(payload, dict) and "instances" in payload:
        samples = _samples(payload["instances"], "instances", contract, single_allowed=False)
        return Decoded(samples, _kserve_v1_reply)
    if isinstance(payload, dict) and "inputs" in payload:
        return Decoded(_samples(payload["inputs"], "inputs", contract, single_allowed=True),
                       _our_reply)
    raise RequestError(f'expected a JSON object {{"inputs": ...}}; {contract.describe()}')


def error_body(message: str) -> dict:
    """The 400 body: TorchServe's error shape, plus `error`, which KServe's clients read."""
    return {"code": 400, "type": "BadRequest", "message": message, "error": message}


# ---- ours and KServe v1 ----

def _samples(value: Any, key: str, contract: InputContract, *, single_allowed: bool) -> np.ndarray:
    try:
        # numpy parses nested lists about twice as fast as torch.tensor
        array = np.asarray(value, dtype=contract.parse_dtype)
    except (TypeError, ValueError, OverflowError) as err:
        raise RequestError(f"`{key}` is not a numeric array ({err}); {contract.describe()}") from None
    return _batched(array, f"`{key}`", contract, single_allowed=single_allowed)


def _batched(array: np.ndarray, what: str, contract: InputContract, *,
             single_allowed: bool) -> np.ndarray:
    if array.shape == contract.shape and single_allowed:
        return array[np.newaxis]
    if array.ndim == len(contract.shape) + 1 and array.shape[1:] == contract.shape and len(array):
        return array
    raise RequestError(f"{what} has shape {list(array.shape)}; {contract.describe()}")


def _our_reply(outputs: np.ndarray, predictions: list[dict] | None) -> dict:
    body: dict[str, Any] = {"outputs": outputs}
    if predictions is not None:
        body["predictions"] = predictions
    return body


def _kserve_v1_reply(outputs: np.ndarray, predictions: list[dict] | None) -> dict:
    if predictions is None:
        return {"predictions": outputs}
    return {"predictions": [{**p, "outputs": o} for p, o in zip(predictions, outputs)]}


# ---- Open Inference Protocol (KServe v2), JSON tensors ----

def _is_oip(inputs: Any) -> bool:
    return isinstance(inputs, list) and bool(inputs) and all(
        isinstance(tensor, dict) and "datatype" in tensor for tensor in inputs)


def _decode_oip(payload: dict, contract: InputContract, model: tuple[str, str]) -> Decoded:
    tensors = payload["inputs"]
    if len(tensors) != 1:
        names = [t.get("name") for t in tensors]
        raise RequestError(f"the request has {len(tensors)} input tensors {names}; this model "
                           f"takes one (shape [N, {', '.join(map(str, contract.shape))}])")
    array = _oip_tensor(tensors[0])
    samples = _batched(array.astype(contract.parse_dtype, copy=False),
                       f"input tensor {tensors[0].get('name')!r}", contract, single_allowed=True)
    requested = _requested_outputs(payload.get("outputs"))
    request_id = payload.get("id")
    name, version = model

    def reply(outputs: np.ndarray, predictions: list[dict] | None) -> dict:
        body: dict[str, Any] = {"model_name": name, "model_version": version}
        if request_id is not None:
            body["id"] = request_id
        tensors_out = _oip_outputs(outputs, predictions)
        if requested is not None:
            tensors_out = [t for t in tensors_out if t["name"] in requested]
        body["outputs"] = tensors_out
        return body

    return Decoded(samples, reply)


def _oip_tensor(tensor: dict) -> np.ndarray:
    """An input tensor's data as an array of its declared shape and datatype."""
    name = tensor.get("name")
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    if not isinstance(name, str):
        raise RequestError(f"an input tensor has no `name` (got {name!r}); every v2 input "
                           'tensor needs "name", "shape", "datatype" and "data"')
    if datatype not in _OIP_DTYPES:
        raise RequestError(f"input tensor {name!r} has datatype {datatype!r}; this model "
                           f"takes one of {', '.join(_OIP_DTYPES)}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                            and d >= 0 for d in shape)):
        raise RequestError(f"input tensor {name!r} has shape {shape!r}; a shape is a list of "
                           "non-negative integers, e.g. [1, 1, 8, 8]")
    if data is None:
        raise RequestError(f"input tensor {name!r} has no `data`; send its values as a (flat "
                           "or nested) JSON list")
    try:
        flat = np.asarray(data, dtype=_OIP_DTYPES[datatype]).reshape(-1)
    except (TypeError, ValueError, OverflowError) as err:
        raise RequestError(f"input tensor {name!r}: `data` is not a {datatype} array ({err})"
                           ) from None
    expected = int(np.prod(shape, dtype=np.int64))
    if flat.size != expected:
        raise RequestError(f"input tensor {name!r} has {flat.size} values but its shape "
                           f"{shape} holds {expected}")
    return flat.reshape(shape)


_OIP_OUTPUT_NAMES = (_OIP_OUTPUT, "label", "probability", "probabilities")


def _requested_outputs(outputs: Any) -> set[str] | None:
    """The output names a v2 request asks for (None: all of them)."""
    if outputs is None:
        return None
    if not (isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                              for o in outputs)):
        raise RequestError(f'`outputs` must be a list of {{"name": ...}} objects, got {outputs!r}')
    requested = {o["name"] for o in outputs}
    unknown = sorted(requested - set(_OIP_OUTPUT_NAMES))
    if unknown:
        raise RequestError(f"requested outputs {unknown} do not exist; this model answers "
                           f"{', '.join(_OIP_OUTPUT_NAMES)} (label and probabilities only with "
                           "labels)")
    return requested


def _oip_outputs(outputs: np.ndarray, predictions: list[dict] | None) -> list[dict]:
    """The model's output tensor and, with labels, each sample's label and probabilities."""
    tensors = [_oip_output(_OIP_OUTPUT, outputs)]
    if predictions:
        tensors.append({"name": "label", "datatype": "BYTES", "shape": [len(predictions)],
                        "data": [p["label"] for p in predictions]})
        tensors.append(_oip_output("probability", np.array(
            [p["probability"] for p in predictions], dtype=np.float32)))
        tensors.append(_oip_output("probabilities", np.array(
            [list(p["probabilities"].values()) for p in predictions], dtype=np.float32)))
    return tensors


def _oip_output(name: str, array: np.ndarray) -> dict:
    datatype = next(k for k, v in _OIP_DTYPES.items() if np.dtype(v) == array.dtype)
    return {"name": name, "datatype": datatype, "shape": list(array.shape),
            "data": array.reshape(-1)}


def _zeros(shape: list[int]) -> str:
    """A short literal example of the input shape, for error messages."""
    text = "0.0"
    for size in reversed(shape):
        text = "[" + ", ".join([text] * min(size, 2)) + (", ...]" if size > 2 else "]")
    return text
