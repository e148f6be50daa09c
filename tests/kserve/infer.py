"""Send one request with KServe's own REST client, the way KServe's predictor forwards it.

Run with a Python that has the `kserve` package (tests create .venv-kserve for it):
    python tests/kserve/infer.py BASE_URL MODEL v1 REQUEST.json
    python tests/kserve/infer.py BASE_URL MODEL v2 TENSOR.json [--binary]

v1: REQUEST.json is the request body ({"instances": [...]}); prints the response body.
v2: TENSOR.json is one input tensor {"name", "shape", "datatype", "data"}; the request is built as
an InferRequest (binary tensor data with --binary) and the response parsed as KServe parses it;
prints {"model_name", "id", "outputs": [{"name", "datatype", "shape", "data"}]}.
On an HTTP error prints {"status": CODE, "body": TEXT}.
"""

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest


async def main(base_url: str, model: str, protocol: str, path: str, binary: bool) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol=protocol, timeout=60))
    payload = json.loads(open(path).read())
    try:
        if protocol == "v1":
            return await client.infer(base_url, payload, model_name=model)
        tensor = InferInput(payload["name"], payload["shape"], payload["datatype"])
        tensor.set_data_from_numpy(np.array(payload["data"], dtype=np.float32).reshape(
            payload["shape"]), binary_data=binary)
        response = await client.infer(base_url, InferRequest(model, [tensor], request_id="req-1"),
                                      model_name=model)
    except httpx.HTTPStatusError as err:
        return {"status": err.response.status_code, "body": err.response.text}
    return {"model_name": response.model_name, "id": response.id,
            "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape),
                         "data": o.as_numpy().tolist() if o.datatype != "BYTES"
                         else [v.decode() if isinstance(v, bytes) else v for v in o.data]}
                        for o in response.outputs]}


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(asyncio.run(main(*args[:4], binary="--binary" in args))))
