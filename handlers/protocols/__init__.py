"""The request protocols the handler answers, one module each, tried in order on every request:

    ours.py        multipart; a raw image body; {"inputs": ...} JSON      -> {"outputs": ...}
    oip.py         KServe v2 / Open Inference Protocol, binary or JSON  -> its tensors
    kserve_v1.py   {"instances": [...]}                                 -> {"predictions": [...]}

The first protocol whose `matches` accepts a request decodes it; a request none accepts is refused
with the shape our protocol expects. A new protocol is a module with a Protocol subclass and its
place in PROTOCOLS.
"""

from __future__ import annotations

from typing import Any

from handlers.errors import RequestError
from handlers.inputs import InputCodec
from handlers.protocols.base import Answer, Decoded, Protocol, Reply, Request, error_reply
from handlers.protocols.kserve_v1 import KServeV1
from handlers.protocols.oip import OIPBinary, OIPJSON
from handlers.protocols.ours import OursJSON, OursMultipart, OursRawImage
from handlers.spec import ModelSpec

__all__ = ["Answer", "Reply", "Decoded", "Protocols", "PROTOCOLS", "Request", "error_reply"]

# Order matters: forms told apart by headers first, then JSON bodies, OIP's tensor lists before
# our {"inputs": ...}, which they also match.
PROTOCOLS: tuple[type[Protocol], ...] = (OursMultipart, OIPBinary, OursRawImage, OIPJSON,
                                         KServeV1, OursJSON)


class Protocols:
    """Every protocol for one model, tried in PROTOCOLS' order."""

    def __init__(self, spec: ModelSpec, codec: InputCodec, processor: Any = None) -> None:
        self.codec = codec
        self.protocols = [protocol(spec, codec, processor) for protocol in PROTOCOLS]

    def decode(self, request: dict, headers: dict[str, Any]) -> Decoded:
        """One TorchServe request (its body or fields, and its headers) as parts plus the way to
        answer it. Raises RequestError."""
        incoming = Request(request, headers)
        protocol = self.route(incoming)
        if protocol is None:
            incoming.payload  # raises the JSON error for a body that is not JSON
            raise RequestError(f'expected a JSON object {{"inputs": ...}}; {self.codec.describe()}')
        return protocol.decode(incoming)

    def route(self, request: Request) -> Protocol | None:
        """The protocol that decodes `request`: the first whose `matches` accepts it."""
        return next((p for p in self.protocols if p.matches(request)), None)
