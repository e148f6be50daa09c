"""Images through a real TorchServe: raw bodies and multipart from curl, bad images answered 400
while their batch neighbours are answered and the worker keeps serving."""

import io
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.manage import register_archive
from tests.helpers import digits_png_spec


@pytest.fixture(scope="module")
def served(torchserve, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    spec, model = digits_png_spec(folder)
    register_archive(torchserve.config, build_archive(spec, export_path=torchserve.config.model_store).archive)
    yield torchserve, model, folder
    TorchServeClient(torchserve.config).unregister("digits_cnn_png", check=False)


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is the client here")
def test_curl_raw_body_and_multipart(served):
    server, model, folder = served
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    (folder / "digit.png").write_bytes(_png(pixels))
    with torch.inference_mode():
        expected = model(torch.from_numpy(pixels / np.float32(255))[None, None])[0]
    url = f"{server.config.inference_url}/predictions/digits_cnn_png"
    auth = f"Authorization: Bearer {server.config.key('inference')}"
    raw = subprocess.run(["curl", "-s", "-H", auth, "-H", "Content-Type: image/png",
                          "--data-binary", f"@{folder / 'digit.png'}", url],
                         capture_output=True, text=True, timeout=60)
    form = subprocess.run(["curl", "-s", "-H", auth, "-F", f"input=@{folder / 'digit.png'};type=image/png",
                           url], capture_output=True, text=True, timeout=60)
    for result in (raw, form):
        body = json.loads(result.stdout)
        assert torch.allclose(torch.tensor(body["outputs"][0]), expected, atol=1e-5), body
        assert body["predictions"][0]["label"] == str(int(expected.argmax()))


def test_bad_images_get_400s_and_the_worker_keeps_serving(served):
    server, _, _ = served
    client = TorchServeClient(server.config)
    good = _png(np.zeros((8, 8), dtype=np.uint8))
    bad = {b"": "is empty", good[:len(good) // 3]: "image", b"not an image at all": "is not a readable png, jpeg, webp image"}
    workers = {w["pid"] for w in client.describe("digits_cnn_png")[0]["workers"]}
    bodies = [good, *bad] * 8
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda b: client.predict("digits_cnn_png", b, content_type="image/png",
                                                         check=False), bodies))
    for body, answer in zip(bodies, answers):
        if body == good:
            assert answer.status == 200, answer.body
        else:
            assert answer.status == 400 and bad[body] in answer.json()["message"]
    wrong_type = client.predict("digits_cnn_png", good, content_type="text/plain", check=False)
    assert wrong_type.status == 400 and "is not an image type" in wrong_type.json()["message"]
    assert {w["pid"] for w in client.describe("digits_cnn_png")[0]["workers"]} == workers
