"""TorchServe's floor for binary Open Inference Protocol requests, for `mar bench` only: a handler
that loads nothing, reads nothing, and answers each request at once with one binary v2 tensor of
the demo CNN's output shape (a [1, 10] FP32 tensor)."""

import json

_OUTPUT = bytes(40)  # ten float32 zeros
_HEADER = json.dumps({"model_name": "noop", "outputs": [{
    "name": "output", "datatype": "FP32", "shape": [1, 10],
    "parameters": {"binary_data_size": len(_OUTPUT)}}]}).encode()


def handle(data, context):
    if data is None:
        return None
    for idx in range(len(data)):
        context.set_response_content_type(idx, "application/octet-stream")
        context.set_response_header(idx, "Inference-Header-Content-Length", str(len(_HEADER)))
    return [_HEADER + _OUTPUT for _ in data]
