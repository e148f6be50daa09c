"""The common case decoded per batch instead of per request.

When every request of a TorchServe batch is one sample of a one-input, fixed-shape numeric model,
sent as our JSON (`{"inputs": <sample>}`) or as a binary v2 tensor, the batch is converted and
checked in one numpy call (`TensorKind.one_sample_each`) instead of one request at a time, and
each request's part is a view of that one array. Routing and the protocol's own rules are the
general path's code (`Protocols.route`, each protocol's `values`); only the input kind's step is
done once for all.

Anything else in the batch (another protocol, several samples in one request, a malformed or
hostile request) sends the whole batch down the general path, which answers each request by its
own rules. The short path takes only requests the general path would accept as they are, so an
answer never depends on which path it took (tests/unit/test_short_path.py).
"""

from __future__ import annotations

from typing import Any

from handlers.kinds.tensor import TensorKind
from handlers.protocols import Decoded, Protocols, Request
from handlers.protocols.oip import OIPBinary
from handlers.protocols.ours import OursJSON
from handlers.spec import ModelSpec

__all__ = ["ShortPath"]

TAKEN = (OursJSON, OIPBinary)  # the protocols whose requests it takes


class ShortPath:
    def __init__(self, spec: ModelSpec, protocols: Protocols) -> None:
        self.protocols = protocols
        self.name = spec.inputs[0].name
        self.kind = protocols.codec.kinds[self.name]

    @staticmethod
    def applies(spec: ModelSpec, protocols: Protocols, processor: Any) -> bool:
        """Whether a model's requests can take it: one numeric input of a fixed shape (no image,
        text or mask), stacked into batches, answered per batch row, without a processor."""
        only = spec.inputs[0]
        return (len(spec.inputs) == 1 and not only.dynamic and processor is None
                and type(protocols.codec.kinds[only.name]) is TensorKind
                and spec.io.attention_mask is None and spec.io.batching == "stack"
                and not spec.io.per_sample)

    def decode(self, requests: list[dict], headers: list[dict[str, Any]]) -> list[Decoded] | None:
        """Every request's Decoded, or None when any request is not the common case."""
        protocol_type, batched, values, encoders = None, False, [], []
        for request, header in zip(requests, headers):
            incoming = Request(request, header)
            protocol = self.protocols.route(incoming)
            if not isinstance(protocol, TAKEN) or protocol_type not in (None, type(protocol)):
                return None  # another protocol, or a batch of two (their values differ in form)
            protocol_type = type(protocol)
            try:
                named, encode = protocol.values(incoming)
            except Exception:  # noqa: BLE001 - the general path answers it with its reason
                return None
            if set(named) != {self.name}:
                return None
            values.append(named[self.name])
            encoders.append(encode)
            batched = protocol.batched
        rows = self.kind.one_sample_each(values, batched=batched) if values else None
        if rows is None:
            return None
        return [Decoded([{self.name: rows[i:i + 1]}], encode) for i, encode in enumerate(encoders)]
