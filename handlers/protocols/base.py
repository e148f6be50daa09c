"""What every protocol shares: the request as TorchServe hands it over, the answer a request gets
from the batch, and the reply bodies (JSON, or TorchServe's error shape)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from handlers.errors import RequestError
from handlers.inputs import InputCodec, Part
from handlers.predictions import Predictions
from handlers.spec import ModelSpec

__all__ = ["Request", "Answer", "Reply", "Decoded", "Encoder", "Protocol", "error_reply",
           "json_reply"]


@dataclass(frozen=True)
class Answer:
    """One request's share of a batch: its rows of every output, and its predictions."""
    outputs: dict[str, Any]  # output name -> (n, ...) array, or a list of arrays per sample
    predictions: Predictions | None  # of the labelled output


@dataclass(frozen=True)
class Reply:
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Decoded:
    parts: list[Part]  # the request's samples, see handlers/inputs.py
    encode: Callable[[Answer], Reply]  # its answer in its own protocol


class Request:
    """One TorchServe request: its body, or its form fields (multipart), and its headers. TorchServe
    sends `/predictions/<name>`, `/v1/models/<name>:predict` and `/v2/models/<name>/infer` to the
    same worker without saying which was called, so the protocols tell them apart from these."""

    def __init__(self, request: dict, headers: dict[str, Any]) -> None:
        self.body = request.get("body", request.get("data"))
        self.fields = {} if len(request) == 1 and self.body is not None else {
            k: v for k, v in request.items() if k not in ("body", "data")}
        self.headers = headers
        self.content_type = str((headers.get("body") or headers.get("data") or {}).get(
            "content-type", "")).split(";")[0].strip().lower()
        self._lowered: dict[str, str] | None = None
        self._parsed: tuple[Any, RequestError | None] | None = None

    def header(self, name: str) -> str | None:
        """A top-level header's value, by its lower-case name."""
        if self._lowered is None:
            self._lowered = {k.lower(): v for k, v in self.headers.items() if isinstance(v, str)}
        return self._lowered.get(name)

    def _parse(self) -> tuple[Any, RequestError | None]:
        """The JSON body, or why it is not JSON: parsed once, whichever protocol asks."""
        if self._parsed is None:
            if not isinstance(self.body, (bytes, bytearray, str)):
                self._parsed = self.body, None  # parsed already by TorchServe
            else:
                try:
                    self._parsed = orjson.loads(self.body), None
                except orjson.JSONDecodeError as err:
                    self._parsed = None, RequestError(
                        f"request body is not valid JSON ({err}); send UTF-8 JSON (no NaN or "
                        'Infinity) with {"inputs": ...}')
        return self._parsed

    @property
    def payload(self) -> Any:
        """The parsed JSON body. Raises RequestError."""
        payload, error = self._parse()
        if error is not None:
            raise error
        return payload

    @property
    def is_json(self) -> bool:
        return self._parse()[1] is None

    def object_with(self, key: str) -> bool:
        """Whether the body is a JSON object with `key`."""
        payload, error = self._parse()
        return error is None and isinstance(payload, dict) and key in payload


Encoder = Callable[[Answer], Reply]


class Protocol:
    """One request protocol: `matches` looks at a request, `decode` turns it into parts and the
    way to answer it. Raises RequestError naming the rule a request breaks.

    A protocol that the short path takes (handlers/short_path.py) also has `values`: the
    request's values by input name, before the input kinds check and convert them, and its
    encoder; its `decode` is `values` followed by the codec's parts."""

    def __init__(self, spec: ModelSpec, codec: InputCodec, processor: Any = None) -> None:
        self.spec, self.codec, self.processor = spec, codec, processor
        self.input_names = [i.name for i in spec.inputs]
        self.output_names = [o.name for o in spec.outputs]

    def matches(self, request: Request) -> bool:
        raise NotImplementedError

    def decode(self, request: Request) -> Decoded:
        raise NotImplementedError

    def encoded_outputs(self, answer: Answer) -> dict[str, Any]:
        """The outputs as the spec's processor maps them for clients (as they are without one)."""
        return self.processor.encode(answer.outputs) if self.processor else answer.outputs


_ERROR_TYPES = {400: "BadRequest", 500: "InternalServerError"}


def error_reply(status: int, message: str) -> Reply:
    """An error body: TorchServe's error shape, plus `error`, which KServe's clients read."""
    return json_reply({"code": status, "type": _ERROR_TYPES[status], "message": message,
                       "error": message})


def json_reply(body: dict) -> Reply:
    # Bytes go out as they are; TorchServe would re-encode a dict with json and indent=2.
    return Reply(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain))


def _plain(value: Any) -> Any:
    """What orjson's numpy support leaves out: arrays of label names (dtype object)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")
