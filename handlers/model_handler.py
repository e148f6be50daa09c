"""TorchServe handler for archives built by `mar build`.

The archive carries this file, the `handlers` package, the `model_defs` files its architecture (and
processor) need, `spec.yaml`, the weights and the spec's `files/`. At start-up the handler rebuilds
the model from those files alone, loads the state_dict on the GPU TorchServe assigned (or the CPU),
and then answers requests in the protocols of handlers/protocols/: ours (`{"inputs": ...}`, JSON
or multipart), KServe v1 and the Open Inference Protocol (KServe v2, JSON or binary tensors).

A malformed request gets HTTP 400 with a message naming the input and the rule; anything
unforeseen while handling one request is that request's own 500, with an error id in the log
(handlers/guard.py). The other requests batched with it are answered normally and the worker keeps
serving.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from torch import Tensor

from handlers.batching import Batch, Batcher
from handlers.device import input_dtype
from handlers.guard import Refusal, forward_failure, guarded
from handlers.inputs import InputCodec
from handlers.metrics import BatchClock, HandlerMetrics
from handlers.predictions import Predictions, softmax
from handlers.protocols import Answer, Decoded, Protocols, error_reply
from handlers.records import FILES_DIR
from handlers.short_path import ShortPath
from handlers.spec import ModelSpec
from handlers.startup import ArchiveModel, load_archive_model, worker_report
from handlers.worker_report import WorkerReport

__all__ = ["ModelHandler", "handle"]

_PROBABILITIES = "<class probabilities>"  # beside the outputs from forward pass to request

logger = logging.getLogger(__name__)


class ModelHandler:
    """initialize() once per worker, then handle() for every batch TorchServe sends.

    A batch goes through five hooks, per request or per batch:
        decode_request   one request -> its samples as parts, and the way to answer it (or a 400)
        batch            every accepted request's parts -> forward passes, tensors on the device
        predict          the model on one forward pass -> its named outputs
        unbatch          the outputs -> one Answer per accepted request (rows, predictions)
        encode_response  an Answer (or the request's error) -> the response body
    """

    def __init__(self) -> None:
        self.initialized = False
        self.spec: ModelSpec | None = None
        self.loaded: ArchiveModel | None = None
        self._protocols: Protocols | None = None
        self._short_path: ShortPath | None = None
        self._batcher: Batcher | None = None
        self._classified: str | None = None  # the output the spec's labels name
        self._metrics = HandlerMetrics()

    def initialize(self, context) -> None:
        """Check the archive's build record, load the model on its device, run the golden check
        (which is also the warm-up at the largest batch), then serve."""
        started, resident_before = time.perf_counter(), psutil.Process().memory_info().rss
        try:
            _refuse_request_envelope()
            _receive_raw_bodies()
            model_dir = Path(context.system_properties["model_dir"])
            loaded = load_archive_model(model_dir, gpu_id=context.system_properties.get("gpu_id"))
            self._adopt(loaded, model_dir / FILES_DIR)
        except Exception as err:
            _report_failure(context, err)
            raise
        report = worker_report(loaded, resident_before=resident_before, started=started)
        logger.info(report.summary())
        logger.info(report.log_line())
        self.initialized = True

    def handle(self, requests: list[dict], context) -> list[bytes]:
        """Answer one TorchServe batch: a response body per request, in order."""
        clock = BatchClock()
        decoded = self._decoded(requests, [_headers(context, idx) for idx in range(len(requests))])
        accepted = [d for d in decoded if isinstance(d, Decoded)]
        clock.lap("decode")
        answers = iter(self._answers(accepted))
        clock.lap("predict")
        bodies = [self.encode_response(d, next(answers) if isinstance(d, Decoded) else d, idx,
                                       context) for idx, d in enumerate(decoded)]
        clock.lap("encode")
        self._metrics.record(clock, requests=len(requests), errors=len(requests) - len(accepted),
                             samples=sum(len(next(iter(p.values()))) for d in accepted for p in d.parts))
        self._metrics.flush_due(context)
        return bodies

    def decode_request(self, request: dict, headers: dict[str, Any] | None = None) -> Decoded:
        """One request's samples, with the way to answer it in its protocol. Raises RequestError
        (and, for a bug or a library's surprise, anything: handle() guards each request)."""
        return self._protocols.decode(request, headers or {})

    def batch(self, accepted: list[Decoded]) -> list[Batch]:
        """Every accepted request's samples as forward passes, on the model's device."""
        return self._batcher.batches([d.parts for d in accepted])

    def predict(self, batch: Batch) -> dict[str, Tensor]:
        """The model on one forward pass, its outputs named."""
        return self.loaded.model_io(batch.inputs)

    def unbatch(self, batches: list[Batch], outputs: list[dict[str, Tensor]],
                accepted: list[Decoded]) -> list[Answer]:
        """Each accepted request's rows of every output, with their predictions (or, for an
        output of class ids, the ids as the spec's label names)."""
        rows = self._batcher.split(batches, [self._with_probabilities(o) for o in outputs],
                                   len(accepted))
        return [self._answer(request_rows) for request_rows in rows]

    def encode_response(self, request: Decoded | Refusal, answer: Answer | Refusal, idx: int,
                        context) -> bytes:
        """The answer in the request's protocol, or the request's refusal (its 400 or 500) in
        TorchServe's error shape; its batch neighbours are unaffected."""
        reply = answer if isinstance(answer, Refusal) else guarded(lambda: request.encode(answer),
                                                                   "encoding the answer to")
        if isinstance(reply, Refusal):
            context.set_response_status(reply.status, reply.message, idx)
            reply = error_reply(reply.status, reply.message)
        context.set_response_content_type(idx, reply.content_type)
        for key, value in reply.headers.items():
            context.set_response_header(idx, key, value)
        return reply.body

    def _decoded(self, requests: list[dict], headers: list[dict[str, Any]]) -> list[Decoded | Refusal]:
        """Every request decoded: all at once on the short path (handlers/short_path.py) when the
        batch is the common case, else each by itself, its problem its own refusal."""
        together = self._short_path.decode(requests, headers) if self._short_path else None
        if together is not None:
            return together
        return [guarded(lambda: self.decode_request(request, request_headers), "decoding")
                for request, request_headers in zip(requests, headers)]

    def _answers(self, accepted: list[Decoded]) -> list[Answer | Refusal]:
        """An Answer per accepted request. When the shared forward pass fails, each request runs
        alone, so only one that fails by itself gets the 500 (all do when the failure is not
        theirs, e.g. a broken device)."""
        if not accepted:
            return []
        try:
            return self._forward(accepted)
        except Exception as err:  # noqa: BLE001 - answered as a clear 500 per request, not a 503
            if len(accepted) == 1:
                return [forward_failure(err)]
        return [answer for request in accepted for answer in self._answers([request])]

    def _forward(self, accepted: list[Decoded]) -> list[Answer]:
        batches = self.batch(accepted)
        return self.unbatch(batches, [self.predict(batch) for batch in batches], accepted)

    def _adopt(self, loaded: ArchiveModel, files_dir: Path) -> None:
        from model_defs import create_processor

        self.spec, self.loaded = loaded.spec, loaded
        self._classified = self.spec.io.classified_output
        processor = create_processor(self.spec.processor, files_dir) if self.spec.processor else None
        codec = InputCodec(self.spec, files_dir)
        self._protocols = Protocols(self.spec, codec, processor)
        self._short_path = ShortPath(self.spec, self._protocols) \
            if ShortPath.applies(self.spec, self._protocols, processor) else None
        dtypes = {i.name: input_dtype(self.spec, i) for i in self.spec.inputs}
        self._batcher = Batcher(self.spec, loaded.device, dtypes,
                                {name: kind.pad_value for name, kind in codec.kinds.items()})

    def _with_probabilities(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The labelled output's class probabilities beside the outputs, one softmax for the
        whole forward pass, split with them (none for an output of class ids)."""
        output = self._classified
        if output is None or _holds_class_ids(outputs[output]):
            return outputs
        return {**outputs, _PROBABILITIES: softmax(outputs[output])}

    def _answer(self, rows: dict[str, Any]) -> Answer:
        probabilities = rows.pop(_PROBABILITIES, None)
        if probabilities is not None:
            return Answer(rows, Predictions(probabilities, self.spec.labels, self.spec.io.top_k))
        output = self._classified
        if output is not None:  # class ids, as names
            return Answer({**rows, output: self._names(rows[output])}, None)
        return Answer(rows, None)

    def _names(self, ids: Any) -> Any:
        """Class ids as the spec's label names (an id past the list stays its number)."""
        if isinstance(ids, list):
            return [self._names(sample) for sample in ids]
        labels = self.spec.labels
        return np.array([labels[i] if 0 <= i < len(labels) else str(i) for i in ids.reshape(-1)],
                        dtype=object).reshape(ids.shape)


def _holds_class_ids(value: Tensor | list[Tensor]) -> bool:
    """An output of integer class ids (a detector's `labels`), not scores to softmax."""
    first = value[0] if isinstance(value, list) and value else value
    return isinstance(first, Tensor) and not first.is_floating_point()


def _headers(context, idx: int) -> dict[str, Any]:
    try:
        return context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError):  # a context without request processors
        return {}


def _report_failure(context, err: Exception) -> None:
    """Log the start-up error whole, then the one line that says so: TorchServe logs only some
    errors itself, and `mar register` waits for this line to show the worker's own error."""
    logger.error("start-up failed:\n%s", traceback.format_exc().rstrip())
    model = context.manifest.get("model", {}) if isinstance(context.manifest, dict) else {}
    logger.error(WorkerReport(event="failed", model=context.model_name,
                              version=model.get("modelVersion", "?"),
                              error=f"{type(err).__name__}: {err}").log_line())


def _receive_raw_bodies() -> None:
    """Have TorchServe's worker hand request bodies over as bytes (it reads this variable per
    request): its json.loads is 3-4x slower than orjson on float arrays, and on malformed JSON it
    logs a traceback before passing the bytes on anyway."""
    os.environ["TS_DECODE_INPUT_REQUEST"] = "false"


def _refuse_request_envelope() -> None:
    """Refuse to start behind one of TorchServe's request envelopes.

    TorchServe wraps the entry point in the envelope its `service_envelope` setting names (KServe's
    runtime sets TS_SERVICE_ENVELOPE, which applies when enable_envvars_config=true). Its `kserve`
    and `kservev2` envelopes unwrap only the first request of a batch and answer the whole batch
    with one response, which TorchServe then fails as a mismatch, so nothing behind them can serve
    a batch. The loader has built the envelope by the time `initialize` runs; find it on the stack.
    """
    from ts.torch_handler.request_envelope.base import BaseEnvelope

    frame = sys._getframe(1)
    for _ in range(8):  # initialize <- handle <- TorchServe's loader, which holds the envelope
        if frame is None:
            return
        envelope = next((v for v in frame.f_locals.values() if isinstance(v, BaseEnvelope)), None)
        if envelope is not None:
            raise RuntimeError(
                f"TorchServe wraps this handler in its request envelope "
                f"`{type(envelope).__module__.rsplit('.', 1)[-1]}` (TS_SERVICE_ENVELOPE, applied "
                "because config.properties has enable_envvars_config=true). Its envelopes answer "
                "only the first request of each batch; this handler reads KServe v1 and v2 bodies "
                "itself. Set enable_envvars_config=false in config.properties (`mar export-kserve` "
                "writes it so) or unset TS_SERVICE_ENVELOPE.")
        frame = frame.f_back


_service = ModelHandler()


def handle(data: list[dict] | None, context) -> list[bytes] | None:
    """TorchServe's entry point: initialize on the first call (data is None), then serve."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
