"""Hostile requests mixed into concurrent batches through a real TorchServe: every valid request
gets its eager answer, every hostile one its own 4xx, and the worker that served them is the one
that started.

The first case is the report that opened this: a 194 KB-class PNG declaring 40000x40000 pixels,
sent raw as image/png among 11 small JPEGs, used to fail most of its batch with 503.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.kinds.image import preprocess
from handlers.spec import load_spec
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.manage import register_archive
from scripts.bench.hostile import hostile_requests
from tests.helpers import digits_png_spec, example_spec

MODEL = "digits_cnn_png"


@pytest.fixture(scope="module")
def served(torchserve, tmp_path_factory):
    spec, model = digits_png_spec(tmp_path_factory.mktemp("hostile"), resize=8, center_crop=8)
    register_archive(torchserve.config, build_archive(spec, export_path=torchserve.config.model_store).archive)
    client = TorchServeClient(torchserve.config)
    yield client, model, load_spec(spec).inputs[0]
    client.unregister(MODEL, check=False)


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12 + seed, 20), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _eager(model, model_input, image: bytes) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(preprocess(image, model_input, "x"))[None])[0].numpy()


def _send(client: TorchServeClient, request: tuple[bytes, str, dict]):
    body, content_type, headers = request
    return client.post(f"/predictions/{MODEL}", body, content_type=content_type, headers=headers)


def _worker_pids(client: TorchServeClient) -> set[int]:
    return {w["pid"] for w in client.describe(MODEL)[0]["workers"]}


def _check_round(client, model, model_input, requests: list[tuple[str, tuple[bytes, str, dict]]]) -> None:
    valid = {name: _eager(model, model_input, body) for name, (body, _, _) in requests
             if name.startswith("valid")}
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(lambda item: _send(client, item[1]), requests))
    for (name, _), answer in zip(requests, answers):
        if name in valid:
            assert answer.status == 200, (name, answer.status, answer.body[:300])
            assert np.allclose(answer.json()["outputs"][0], valid[name], atol=1e-5), name
        else:
            assert answer.status != 500, f"{name}: an unforeseen 500, a bug to fix: {answer.body[:300]}"
            assert 400 <= answer.status < 500, (name, answer.status, answer.body[:300])


def test_the_40000_pixel_png_costs_its_neighbours_nothing(served):
    client, model, model_input = served
    pids = _worker_pids(client)
    bomb = hostile_requests()["40000x40000 png"]
    for _ in range(3):
        requests = [("bomb", bomb)] + [(f"valid {i}", (_jpeg(i), "image/jpeg", {}))
                                       for i in range(11)]
        _check_round(client, model, model_input, requests)
    answer = _send(client, bomb)
    assert answer.status == 400 and "over the limit of 1,000,000 pixels" in answer.json()["message"]
    assert _worker_pids(client) == pids


def test_every_hostile_kind_mixed_into_concurrent_batches(served):
    client, model, model_input = served
    pids = _worker_pids(client)
    hostile = list(hostile_requests().items())
    for round_ in range(2):
        requests = []
        for i, item in enumerate(hostile):
            requests += [item, (f"valid {round_}.{i}", (_jpeg(i + round_), "image/jpeg", {}))]
        _check_round(client, model, model_input, requests)
    assert _worker_pids(client) == pids


def test_five_megabytes_of_text_is_refused_before_tokenizing(torchserve, tmp_path):
    spec, model = example_spec(tmp_path, "sentiment")
    register_archive(torchserve.config, build_archive(spec, export_path=torchserve.config.model_store).archive)
    client = TorchServeClient(torchserve.config)
    try:
        texts = ["the movie was good", "bad", "fun plot", "x " * 2_500_000]
        bodies = [json.dumps({"inputs": {"input_ids": t}}).encode() for t in texts]
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            answers = list(pool.map(lambda b: client.predict("sentiment", b, check=False), bodies))
        assert [a.status for a in answers] == [200, 200, 200, 400], [a.body[:200] for a in answers]
        assert "5,000,000 characters, more than its max of 64 tokens" in answers[3].json()["message"]
    finally:
        client.unregister("sentiment", check=False)
