"""TorchServe handler for archives built by `mar build`.

The archive carries this file, the `handlers` package (spec and loading code), the `model_defs`
files its architecture needs, `spec.yaml` and the weights. At start-up the handler rebuilds the model
from those files alone, loads the state_dict on the GPU TorchServe assigned (or the CPU), and then
serves JSON requests:

    request:   {"inputs": <one sample of the spec's input shape, or a list of samples>}
    response:  {"outputs": [<model output per sample>],
                "predictions": [{"label", "probability", "probabilities"} per sample]}  # with labels

A malformed request gets HTTP 400 with a message naming the expected shape and dtype; the other
requests batched with it are answered normally and the worker keeps serving.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from handlers.integrity import load_archive_model
from handlers.loading import input_dtype
from handlers.spec import ModelSpec

__all__ = ["ModelHandler", "RequestError", "handle"]

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request that does not follow the model's input contract (answered with HTTP 400)."""


class ModelHandler:
    """initialize() once per worker, then handle() for every batch TorchServe sends."""

    def __init__(self) -> None:
        self.initialized = False
        self.spec: ModelSpec | None = None
        self.device = torch.device("cpu")
        self.model: torch.nn.Module | None = None

    def initialize(self, context) -> None:
        """Check the archive's build record, load the model on its device, run the golden check
        (which is also the warm-up at the largest batch), then serve."""
        model_dir = Path(context.system_properties["model_dir"])
        loaded = load_archive_model(model_dir, gpu_id=context.system_properties.get("gpu_id"))
        self.spec, self.model, self.device = loaded.spec, loaded.model, loaded.device
        self.initialized = True
        logger.info("model %s %s (%s) ready on %s at %s; golden check max abs error %.3g",
                    self.spec.name, self.spec.version, self.spec.arch, self.device,
                    self.spec.serving.precision, loaded.golden_max_error)

    def handle(self, data: list[dict], context) -> list[dict]:
        """Answer one TorchServe batch: a response body per request, in order."""
        samples = [self._decode_or_error(request) for request in data]
        valid = [s for s in samples if isinstance(s, Tensor)]
        outputs = self.inference(torch.cat(valid)) if valid else None
        return self.postprocess(samples, outputs, context)

    def preprocess(self, request: dict) -> Tensor:
        """One request's samples as a (n, *input.shape) tensor on the CPU. Raises RequestError."""
        payload = _json_body(request)
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise RequestError(f'expected a JSON object {{"inputs": ...}}; {self._contract()}')
        try:
            tensor = torch.tensor(payload["inputs"], dtype=input_dtype(self.spec))
        except (TypeError, ValueError, RuntimeError) as err:
            raise RequestError(f"`inputs` is not a numeric array ({err}); {self._contract()}") from None
        shape = tuple(self.spec.input.shape)
        if tuple(tensor.shape) == shape:
            return tensor.unsqueeze(0)
        if tensor.dim() == len(shape) + 1 and tuple(tensor.shape[1:]) == shape and len(tensor):
            return tensor
        raise RequestError(f"`inputs` has shape {list(tensor.shape)}; {self._contract()}")

    def inference(self, batch: Tensor) -> Tensor:
        """Run the model on one batch; the result is back on the CPU."""
        with torch.inference_mode():
            return self.model(batch.to(self.device, non_blocking=True)).float().cpu()

    def postprocess(self, samples: list, outputs: Tensor | None, context) -> list[dict]:
        """Split the batch output back into one response per request; errors get HTTP 400."""
        responses, offset = [], 0
        for idx, sample in enumerate(samples):
            if isinstance(sample, RequestError):
                context.set_response_status(400, str(sample), idx)
                responses.append({"code": 400, "type": "BadRequest", "message": str(sample)})
                continue
            chunk = outputs[offset:offset + len(sample)]
            offset += len(sample)
            responses.append(self._response(chunk))
        return responses

    def _decode_or_error(self, request: dict) -> Tensor | RequestError:
        try:
            return self.preprocess(request)
        except RequestError as err:
            return err

    def _response(self, outputs: Tensor) -> dict[str, Any]:
        body: dict[str, Any] = {"outputs": outputs.tolist()}
        if self.spec.labels is not None:
            body["predictions"] = [self._prediction(row) for row in outputs]
        return body

    def _prediction(self, logits: Tensor) -> dict[str, Any]:
        probabilities = torch.softmax(logits, dim=-1)
        best = int(probabilities.argmax())
        return {"label": self.spec.labels[best], "probability": float(probabilities[best]),
                "probabilities": dict(zip(self.spec.labels, probabilities.tolist()))}

    def _contract(self) -> str:
        shape = list(self.spec.input.shape)
        return (f"expected one sample of shape {shape} or a list of samples of shape [N, "
                f"{', '.join(map(str, shape))}], dtype {self.spec.input.dtype}, "
                f'e.g. {{"inputs": {_zeros(shape)}}}')


def _json_body(request: dict) -> Any:
    body = request.get("body", request.get("data"))
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            return json.loads(body)
        except json.JSONDecodeError as err:
            raise RequestError(f"request body is not valid JSON ({err}); send "
                               'Content-Type: application/json with {"inputs": ...}') from None
    return body


def _zeros(shape: list[int]) -> str:
    """A short literal example of the input shape, for error messages."""
    text = "0.0"
    for size in reversed(shape):
        text = "[" + ", ".join([text] * min(size, 2)) + (", ...]" if size > 2 else "]")
    return text


_service = ModelHandler()


def handle(data: list[dict] | None, context) -> list[dict] | None:
    """TorchServe's entry point: initialize on the first call (data is None), then serve."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
