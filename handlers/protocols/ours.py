"""Our protocol, in its three forms, all answered {"outputs": ...} (with "predictions" when the spec
has labels):

    JSON        {"inputs": <the one input's value>}  or  {"inputs": {"<name>": <value>, ...}}
    multipart   one part per named input (JSON, text or raw bytes)
    raw image   a body of type image/jpeg, image/png or image/webp, for a one-image model

A value is one sample or a list of samples, in the forms its input's kind takes (handlers/kinds/).
"""

from __future__ import annotations

from typing import Any

import orjson

from handlers.errors import RequestError
from handlers.protocols.base import (Answer, Decoded, Encoder, Protocol, Reply, Request,
                                     json_reply)

__all__ = ["OursJSON", "OursMultipart", "OursRawImage"]


class _Ours(Protocol):
    def named(self, value: Any) -> dict[str, Any]:
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

    def reply(self, answer: Answer) -> Reply:
        outputs = self.encoded_outputs(answer)
        if self.spec.io.per_sample and not self.processor:  # one object per sample
            outputs = [dict(zip(outputs, sample)) for sample in zip(*outputs.values())]
        elif len(self.output_names) == 1 and not self.processor:
            outputs = outputs[self.output_names[0]]  # one output: its rows
        body: dict[str, Any] = {"outputs": outputs}
        if answer.predictions is not None:
            body["predictions"] = answer.predictions.per_sample()
        return json_reply(body)


class OursMultipart(_Ours):
    def matches(self, request: Request) -> bool:
        return bool(request.fields)

    def decode(self, request: Request) -> Decoded:
        if len(request.fields) > len(self.input_names):  # refused before any part is parsed
            raise RequestError(f"the form has {len(request.fields)} parts; this model takes at "
                               f"most {len(self.input_names)}, one per input "
                               f"({', '.join(self.input_names)})")
        values = {}
        for name, value in request.fields.items():
            content_type = str((request.headers.get(name) or {}).get("content-type", "")).lower()
            values[name] = _part_value(name, value, content_type)
        return Decoded(self.codec.parts(self.named(values)), self.reply)


class OursRawImage(_Ours):
    """A raw image body, for a model whose one input takes raw bodies (an image). A body that is
    neither an image type nor JSON, sent to such a model, is taken as one too, so its refusal
    names the content types that work."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kinds = list(self.codec.kinds.values())
        self.body_kind = kinds[0] if len(kinds) == 1 and kinds[0].body_types else None

    def matches(self, request: Request) -> bool:
        return request.content_type.startswith("image/") or (
            self.body_kind is not None and not request.is_json)

    def decode(self, request: Request) -> Decoded:
        content_type = request.content_type
        if self.body_kind is None:
            raise RequestError(f"a body of type {content_type or '(none)'} can only go to a model "
                               "with one image input; send JSON or multipart/form-data")
        if not self.body_kind.takes_body(content_type):
            raise RequestError(f"Content-Type {content_type or '(none)'} is not an image type this "
                               f"model takes; send the image as "
                               f"{', '.join(self.body_kind.body_types)}, in multipart/form-data, "
                               'or as {"inputs": {"b64": ...}} in JSON')
        return Decoded(self.codec.parts({self.body_kind.input.name: request.body}), self.reply)


class OursJSON(_Ours):
    batched = False  # a value is one sample, or a list of samples
    label = "`inputs`"

    def matches(self, request: Request) -> bool:
        return request.object_with("inputs")

    def values(self, request: Request) -> tuple[dict[str, Any], Encoder]:
        return self.named(request.payload["inputs"]), self.reply

    def decode(self, request: Request) -> Decoded:
        values, encode = self.values(request)
        return Decoded(self.codec.parts(values, label=self.label), encode)


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
