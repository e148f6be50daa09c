"""TorchServe handler for archives built by `mar build`.

The archive carries this file, the `handlers` package (spec, loading and protocol code), the
`model_defs` files its architecture needs, `spec.yaml` and the weights. At start-up the handler
rebuilds the model from those files alone, loads the state_dict on the GPU TorchServe assigned (or
the CPU), and then answers JSON requests in three protocols (see handlers/protocols.py): ours
(`{"inputs": ...}` on /predictions/<name>), KServe v1 (`{"instances": [...]}` on
/v1/models/<name>:predict) and the Open Inference Protocol (KServe v2, on /v2/models/<name>/infer).

A malformed request gets HTTP 400 with a message naming the expected shape and dtype; the other
requests batched with it are answered normally and the worker keeps serving.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import torch
from torch import Tensor

from handlers.device import input_dtype
from handlers.errors import RequestError
from handlers.metrics import BatchClock, HandlerMetrics
from handlers.protocols import Decoded, InputContract, decode, error_body
from handlers.spec import ModelSpec
from handlers.startup import ArchiveModel, load_archive_model, worker_report
from handlers.worker_report import WorkerReport

__all__ = ["ModelHandler", "Answer", "handle"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """One request's share of a batch's outputs, ready to encode."""
    request: Decoded
    outputs: np.ndarray  # (n, ...) float32, n = the request's samples
    predictions: list[dict[str, Any]] | None  # label and probabilities per sample, with labels


class ModelHandler:
    """initialize() once per worker, then handle() for every batch TorchServe sends.

    A batch goes through five hooks, per request or per batch:
        decode_request   one request body -> its samples and the way to answer it (or a 400)
        batch            every accepted request's samples -> one tensor on the model's device
        predict          the model on that tensor -> outputs on the CPU
        unbatch          the outputs -> one Answer per accepted request
        encode_response  an Answer (or the request's error) -> the response body
    """

    def __init__(self) -> None:
        self.initialized = False
        self.spec: ModelSpec | None = None
        self.device = torch.device("cpu")
        self.model: torch.nn.Module | None = None
        self._input_dtype = torch.float32
        self._contract: InputContract | None = None
        self._metrics = HandlerMetrics()

    def initialize(self, context) -> None:
        """Check the archive's build record, load the model on its device, run the golden check
        (which is also the warm-up at the largest batch), then serve."""
        started, resident_before = time.perf_counter(), psutil.Process().memory_info().rss
        try:
            _refuse_request_envelope()
            _receive_raw_bodies()
            loaded = load_archive_model(Path(context.system_properties["model_dir"]),
                                        gpu_id=context.system_properties.get("gpu_id"))
        except Exception as err:
            _report_failure(context, err)
            raise
        self._adopt(loaded)
        report = worker_report(loaded, resident_before=resident_before, started=started)
        logger.info(report.summary())
        logger.info(report.log_line())
        self.initialized = True

    def handle(self, requests: list[dict], context) -> list[bytes]:
        """Answer one TorchServe batch: a response body per request, in order."""
        clock = BatchClock()
        decoded = [self._decode_or_error(request) for request in requests]
        accepted = [d for d in decoded if isinstance(d, Decoded)]
        clock.lap("decode")
        answers = iter(self.unbatch(self.predict(self.batch(accepted)), accepted) if accepted else [])
        clock.lap("predict")
        bodies = [self.encode_response(d if isinstance(d, RequestError) else next(answers), idx,
                                       context) for idx, d in enumerate(decoded)]
        clock.lap("encode")
        self._metrics.record(clock, requests=len(requests), errors=len(requests) - len(accepted),
                             samples=sum(len(d.samples) for d in accepted))
        self._metrics.flush_due(context)
        return bodies

    def decode_request(self, request: dict) -> Decoded:
        """One request's samples as a (n, *input.shape) array, with the way to answer it in its
        protocol. Raises RequestError."""
        return decode(_json_body(request), self._contract, model=(self.spec.name, self.spec.version))

    def batch(self, accepted: list[Decoded]) -> Tensor:
        """Every accepted request's samples as one tensor of the model's input dtype on its
        device; on a GPU through pinned memory, so the copy is asynchronous."""
        tensor = torch.from_numpy(np.concatenate([d.samples for d in accepted]))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, dtype=self._input_dtype, non_blocking=True)

    def predict(self, batch: Tensor) -> Tensor:
        """Run the model on one batch; the result comes back to the CPU once, as float32."""
        with torch.inference_mode():
            return self.model(batch).float().cpu()

    def unbatch(self, outputs: Tensor, accepted: list[Decoded]) -> list[Answer]:
        """Each accepted request's rows of the outputs, with their predictions."""
        outputs_np = outputs.numpy()
        predictions = self._predictions(outputs)
        answers, offset = [], 0
        for request in accepted:
            rows = slice(offset, offset + len(request.samples))
            offset += len(request.samples)
            answers.append(Answer(request, outputs_np[rows],
                                  predictions[rows] if predictions is not None else None))
        return answers

    def encode_response(self, answer: Answer | RequestError, idx: int, context) -> bytes:
        """The response body in the request's protocol, as compact JSON bytes; a RequestError
        becomes this request's HTTP 400 (its batch neighbours are unaffected)."""
        if isinstance(answer, RequestError):
            context.set_response_status(400, str(answer), idx)
            body = error_body(str(answer))
        else:
            body = answer.request.reply(answer.outputs, answer.predictions)
        context.set_response_content_type(idx, "application/json")
        # Bytes go out as they are; TorchServe would re-encode a dict with json and indent=2.
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    def _adopt(self, loaded: ArchiveModel) -> None:
        self.spec, self.model, self.device = loaded.spec, loaded.model, loaded.device
        self._input_dtype = input_dtype(self.spec)
        # numpy has no bfloat16 (and float16 parsing is slow): parse floats as float32, then cast
        parse_dtype = np.dtype(np.float32) if self._input_dtype.is_floating_point else \
            np.dtype(self.spec.input.dtype)
        self._contract = InputContract(self.spec.input.shape, self.spec.input.dtype, parse_dtype)

    def _decode_or_error(self, request: dict) -> Decoded | RequestError:
        try:
            return self.decode_request(request)
        except RequestError as err:
            return err

    def _predictions(self, outputs: Tensor) -> list[dict[str, Any]] | None:
        """Label, probability and all class probabilities per sample (float32 kept as float32,
        so the JSON carries 9 digits, not 17); None without labels."""
        if self.spec.labels is None:
            return None
        probabilities = torch.softmax(outputs, dim=-1).numpy()
        best = probabilities.argmax(axis=-1)
        labels = self.spec.labels
        return [{"label": labels[b], "probability": row[b], "probabilities": dict(zip(labels, row))}
                for b, row in zip(best.tolist(), probabilities)]


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


def _json_body(request: dict) -> Any:
    """The parsed body: from bytes, or as it is where TorchServe parsed it already (a handler
    used in-process, without `_receive_raw_bodies`)."""
    body = request.get("body", request.get("data"))
    if isinstance(body, (bytes, bytearray, str)):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise RequestError(f"request body is not valid JSON ({err}); send UTF-8 JSON "
                               '(no NaN or Infinity) with {"inputs": ...}') from None
    return body


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
