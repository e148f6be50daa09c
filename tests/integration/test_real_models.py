"""Real models' tensors through a real TorchServe: a text model with an attention mask and two
outputs, an LSTM without a mask; JSON, multipart (curl) and the Open Inference Protocol
(tritonclient, JSON and binary tensors)."""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.manage import register_archive
from tests.helpers import example_spec

TEXTS = ["the movie was good", "bad", "i really liked the plot and the acting but not the story",
         "fun", "the film was boring and the acting was terrible", "great", "ok", "not bad at all"]


@pytest.fixture(scope="module")
def served(torchserve, tmp_path_factory):
    """sentiment and speaker registered on the session's server (and their eager twins)."""
    folder = tmp_path_factory.mktemp("real_models")
    models = {}
    for name in ("sentiment", "speaker"):
        spec, model = example_spec(folder, name)
        register_archive(torchserve.config, build_archive(
            spec, export_path=torchserve.config.model_store).archive, workers=1)
        models[name] = model
    yield torchserve, models
    client = TorchServeClient(torchserve.config)
    for name in models:
        client.unregister(name, check=False)


def _post(server, name: str, payload) -> tuple[int, dict]:
    response = TorchServeClient(server.config).predict(name, json.dumps(payload).encode(),
                                                       check=False)
    return response.status, response.json()


def test_mixed_lengths_at_once_equal_each_request_alone(served):
    server, _ = served
    alone = [_post(server, "sentiment", {"inputs": {"input_ids": t}})[1] for t in TEXTS]
    rng = np.random.default_rng(1)
    mels = [rng.random((n, 40), dtype=np.float32).tolist() for n in (12, 40, 12, 3, 40, 7, 400, 12)]
    alone_mels = [_post(server, "speaker", {"inputs": m})[1] for m in mels]
    with ThreadPoolExecutor(max_workers=16) as pool:  # batch_size 8: they share batches
        together = list(pool.map(lambda t: _post(server, "sentiment", {"inputs": {"input_ids": t}}),
                                 TEXTS * 3))
        together_mels = list(pool.map(lambda m: _post(server, "speaker", {"inputs": m}), mels * 3))
    for i, (status, body) in enumerate(together):
        want = alone[i % len(TEXTS)]["outputs"]
        assert status == 200
        assert np.allclose(body["outputs"]["logits"], want["logits"], atol=1e-5)
        assert np.array(body["outputs"]["token_states"]).shape == np.array(want["token_states"]).shape
        assert np.allclose(body["outputs"]["token_states"], want["token_states"], atol=1e-5)
    for i, (status, body) in enumerate(together_mels):
        assert status == 200
        assert np.allclose(body["outputs"], alone_mels[i % len(mels)]["outputs"], atol=1e-5)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl (the multipart client) is not installed")
def test_multipart_from_curl(served, tmp_path):
    server, _ = served
    reference = _post(server, "sentiment", {"inputs": {"input_ids": "the movie was good"}})[1]
    url = f"{server.config.inference_url}/predictions/sentiment"
    auth = f"Authorization: Bearer {server.config.key('inference')}"
    text_part = subprocess.run(["curl", "-s", "-H", auth, "-F", "input_ids=the movie was good;type=text/plain",
                                url], capture_output=True, text=True, timeout=60)
    ids = tmp_path / "ids.json"
    ids.write_text("[2, 3, 5, 7, 9]")
    json_parts = subprocess.run(["curl", "-s", "-H", auth, "-F", f"input_ids=@{ids};type=application/json",
                                 "-F", "attention_mask=[1,1,1,1,1];type=application/json", url],
                                capture_output=True, text=True, timeout=60)
    for result in (text_part, json_parts):
        body = json.loads(result.stdout)
        assert np.allclose(body["outputs"]["logits"], reference["outputs"]["logits"], atol=1e-6), body


@pytest.mark.parametrize("binary", [False, True], ids=["json-tensors", "binary-tensors"])
def test_tritonclient_unchanged(served, binary):
    tritonclient = pytest.importorskip("tritonclient.http")
    server, models = served
    client = tritonclient.InferenceServerClient(urlsplit(server.config.inference_url).netloc)
    headers = {"Authorization": f"Bearer {server.config.key('inference')}"}
    ids = np.array([[2, 3, 5, 7, 9], [2, 9, 22, 1, 1]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=np.int64)
    inputs = [tritonclient.InferInput("input_ids", list(ids.shape), "INT64"),
              tritonclient.InferInput("attention_mask", list(mask.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids, binary_data=binary)
    inputs[1].set_data_from_numpy(mask, binary_data=binary)
    outputs = [tritonclient.InferRequestedOutput("logits", binary_data=binary),
               tritonclient.InferRequestedOutput("token_states", binary_data=binary)]
    result = client.infer("sentiment", inputs, outputs=outputs, headers=headers)
    with torch.inference_mode():
        logits, states = models["sentiment"](torch.from_numpy(ids), torch.from_numpy(mask))
    assert np.allclose(result.as_numpy("logits"), logits.numpy(), atol=1e-5)
    assert result.as_numpy("token_states").shape == (2, 5, 32)
    assert np.allclose(result.as_numpy("token_states")[0], states[0].numpy(), atol=1e-5)
    mels = np.random.default_rng(2).random((3, 25, 40), dtype=np.float32)
    tensor = tritonclient.InferInput("mels", list(mels.shape), "FP32")
    tensor.set_data_from_numpy(mels, binary_data=binary)
    result = client.infer("speaker", [tensor], headers=headers,
                          outputs=[tritonclient.InferRequestedOutput("embedding", binary_data=binary)])
    with torch.inference_mode():
        assert np.allclose(result.as_numpy("embedding"), models["speaker"](torch.from_numpy(mels)).numpy(),
                           atol=1e-5)


def test_bad_binary_and_long_sequences_get_400s_through_the_server(served):
    server, _ = served
    status, body = _post(server, "sentiment", {"inputs": {"input_ids": " ".join(["good"] * 70)}})
    assert status == 400 and "over its max of 64" in body["message"]
    url = urlsplit(server.config.inference_url)
    head = json.dumps({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 3],
                                   "parameters": {"binary_data_size": 16}}]}).encode()
    import http.client

    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.request("POST", "/v2/models/sentiment/infer", head + b"\x00" * 16, {
        "Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream",
        "Authorization": f"Bearer {server.config.key('inference')}"})
    response = connection.getresponse()
    assert response.status == 400
    assert "binary_data_size 16 does not match its shape [1, 3]" in json.loads(response.read())["message"]

