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
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import torch
from torch import Tensor

from handlers.integrity import load_archive_model
from handlers.loading import input_dtype
from handlers.protocols import Decoded, InputContract, RequestError, decode, error_body
from handlers.spec import ModelSpec

__all__ = ["ModelHandler", "RequestError", "handle", "memory_report"]

logger = logging.getLogger(__name__)


class ModelHandler:
    """initialize() once per worker, then handle() for every batch TorchServe sends."""

    def __init__(self) -> None:
        self.initialized = False
        self.spec: ModelSpec | None = None
        self.device = torch.device("cpu")
        self.model: torch.nn.Module | None = None
        self._input_dtype = torch.float32
        self._contract: InputContract | None = None

    def initialize(self, context) -> None:
        """Check the archive's build record, load the model on its device, run the golden check
        (which is also the warm-up at the largest batch), then serve."""
        _refuse_request_envelope()
        model_dir = Path(context.system_properties["model_dir"])
        _receive_raw_bodies()
        resident_before = psutil.Process().memory_info().rss
        loaded = load_archive_model(model_dir, gpu_id=context.system_properties.get("gpu_id"))
        self._adopt(loaded)
        self.initialized = True
        self._log_ready(loaded, resident_before)

    def handle(self, data: list[dict], context) -> list[bytes]:
        """Answer one TorchServe batch: a response body per request, in order."""
        decoded = [self._decode_or_error(request) for request in data]
        valid = [d.samples for d in decoded if isinstance(d, Decoded)]
        outputs = self.inference(self._to_device(np.concatenate(valid))) if valid else None
        return self.postprocess(decoded, outputs, context)

    def preprocess(self, request: dict) -> Decoded:
        """One request's samples as a (n, *input.shape) array, with the way to answer it in its
        protocol. Raises RequestError."""
        return decode(_json_body(request), self._contract, model=(self.spec.name, self.spec.version))

    def inference(self, batch: Tensor) -> Tensor:
        """Run the model on one batch (already on its device); the result comes back to the CPU
        once, as float32."""
        with torch.inference_mode():
            return self.model(batch).float().cpu()

    def _to_device(self, batch: np.ndarray) -> Tensor:
        """The batch as a tensor of the model's input dtype on its device; on a GPU through
        pinned memory, so the copy is asynchronous."""
        tensor = torch.from_numpy(batch)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, dtype=self._input_dtype, non_blocking=True)

    def postprocess(self, decoded: list, outputs: Tensor | None, context) -> list[bytes]:
        """Split the batch output into one compact JSON body per request; errors get HTTP 400."""
        outputs_np = outputs.numpy() if outputs is not None else None
        predictions = self._predictions(outputs) if outputs is not None else None
        responses, offset = [], 0
        for idx, request in enumerate(decoded):
            if isinstance(request, RequestError):
                context.set_response_status(400, str(request), idx)
                body = error_body(str(request))
            else:
                rows = slice(offset, offset + len(request.samples))
                offset += len(request.samples)
                body = request.reply(outputs_np[rows], predictions[rows] if predictions else None)
            context.set_response_content_type(idx, "application/json")
            # Bytes go out as they are; TorchServe would re-encode a dict with json and indent=2.
            responses.append(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))
        return responses

    def _adopt(self, loaded) -> None:
        self.spec, self.model, self.device = loaded.spec, loaded.model, loaded.device
        self._input_dtype = input_dtype(self.spec)
        # numpy has no bfloat16 (and float16 parsing is slow): parse floats as float32, then cast
        parse_dtype = np.dtype(np.float32) if self._input_dtype.is_floating_point else \
            np.dtype(self.spec.input.dtype)
        self._contract = InputContract(self.spec.input.shape, self.spec.input.dtype, parse_dtype)
        # On a GPU too: the worker's own CPU work (decoding, softmax) gains nothing from all cores,
        # and several workers each spinning up every core's thread starve one another.
        torch.set_num_threads(self.spec.serving.cpu_threads)

    def _log_ready(self, loaded, resident_before: int) -> None:
        if self.device.type == "cpu" and self.spec.serving.device == "auto":
            logger.info("serving.device is auto and %s: serving on the CPU",
                        "CUDA is not available" if not torch.cuda.is_available()
                        else "TorchServe assigned no GPU to this worker")
        logger.info("model %s %s (%s) ready on %s at %s; golden check max abs error %.3g",
                    self.spec.name, self.spec.version, self.spec.arch, self.device,
                    self.spec.serving.precision, loaded.golden_max_error)
        logger.info(memory_report(resident_before, loaded.weights_bytes, self.device))

    def _decode_or_error(self, request: dict) -> Decoded | RequestError:
        try:
            return self.preprocess(request)
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


def memory_report(resident_before: int, weights_bytes: int, device: torch.device) -> str:
    """One log line: how much this worker's resident memory grew while loading (its peak minus
    before), relative to the weights, and the GPU memory the model holds."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    growth = max(peak - resident_before, 0)
    gpu = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    return (f"load memory: resident_growth_bytes={growth} weights_bytes={weights_bytes} "
            f"gpu_allocated_bytes={gpu} (resident +{growth / 2**20:.1f} MiB, "
            f"{growth / max(weights_bytes, 1):.2f}x the weights; GPU {gpu / 2**20:.1f} MiB)")


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
