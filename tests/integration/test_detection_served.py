"""Detection and segmentation through a real TorchServe: requests of different image sizes sent at
once share batches, and each answer equals that image alone in eager PyTorch (zero boxes and a
hundred in the same batch); bad images get their 400s; tritonclient's binary v2 works unchanged."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

from model_defs import create_model
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.manage import register_archive
from tests.helpers import counting_detector, png, save_weights, write_spec

LABELS = ["background", "thing"]


def _jpeg(height: int, width: int, seed: int) -> bytes:
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = np.random.default_rng(seed).random((height, width, 3), dtype=np.float32) * 255
    out = io.BytesIO()
    Image.fromarray((0.5 * ramp + 0.5 * noise).astype(np.uint8), "RGB").save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def served(torchserve, tmp_path_factory):
    folder = tmp_path_factory.mktemp("detection")
    detector = counting_detector()
    save_weights(detector, folder / "detector.pt")
    image = {"type": "image", "shape": [3, None, None], "max": [320, 320],
             "image": {"mode": "RGB", "formats": ["jpeg", "png"]}}
    write_spec(folder, {"name": "detector", "version": "1.0", "arch": "anchor_detector",
                        "params": {"num_classes": 2, "channels": 4, "anchor_sizes": [8.0]},
                        "weights": "detector.pt", "input": image, "batching": "list",
                        "outputs": {"per_sample": True, "names": ["boxes", "scores", "labels"]},
                        "labels": LABELS, "serving": {"batch_size": 8, "max_batch_delay_ms": 50}},
               "detector.yaml")
    torch.manual_seed(0)
    segmenter = create_model("fcn_segmenter", num_classes=3, channels=8).eval()
    save_weights(segmenter, folder / "segmenter.pt")
    write_spec(folder, {"name": "segmenter", "version": "1.0", "arch": "fcn_segmenter",
                        "params": {"num_classes": 3, "channels": 8}, "weights": "segmenter.pt",
                        "input": image, "outputs": [{"name": "out", "follows": "input"}],
                        "serving": {"batch_size": 4, "max_batch_delay_ms": 50}}, "segmenter.yaml")
    for name in ("detector", "segmenter"):
        register_archive(torchserve.config, build_archive(
            folder / f"{name}.yaml", export_path=torchserve.config.model_store).archive, workers=1)
    yield TorchServeClient(torchserve.config), detector, segmenter
    for name in ("detector", "segmenter"):
        TorchServeClient(torchserve.config).unregister(name, check=False)


def _pixels(data: bytes) -> torch.Tensor:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)


def test_detections_of_mixed_sizes_at_once_equal_each_image_alone(served):
    client, detector, _ = served
    images = [_jpeg(48 + 16 * i, 320 - 24 * i, seed=i) for i in range(10)] + \
        [png(64, 64, level=0), png(160, 160, level=255)]  # no box, and a hundred

    def ask(body):
        return client.predict("detector", body, content_type="image/jpeg" if body[:2] ==
                              b"\xff\xd8" else "image/png").json()["outputs"][0]

    with ThreadPoolExecutor(max_workers=12) as pool:  # batch_size 8: they share batches
        answers = list(pool.map(ask, images * 2))
    counts = set()
    for body, answer in zip(images * 2, answers):
        with torch.inference_mode():
            expected = detector([_pixels(body)])[0]
        assert torch.allclose(torch.tensor(answer["boxes"]).reshape(-1, 4), expected["boxes"],
                              atol=1e-3)
        assert torch.allclose(torch.tensor(answer["scores"]), expected["scores"], atol=1e-5)
        assert answer["labels"] == [LABELS[i] for i in expected["labels"].tolist()]
        counts.add(len(answer["boxes"]))
    assert {0, 100} <= counts


def test_masks_of_mixed_sizes_come_back_at_each_requests_size(served):
    client, _, segmenter = served
    images = [_jpeg(40 + 30 * i, 200 - 20 * i, seed=20 + i) for i in range(6)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda body: client.predict(
            "segmenter", body, content_type="image/jpeg").json()["outputs"][0], images * 2))
    for body, answer in zip(images * 2, answers):
        pixels = _pixels(body)
        with torch.inference_mode():
            expected = segmenter(pixels[None])["out"][0]
        assert list(np.shape(answer)) == [3, *pixels.shape[1:]]
        assert torch.allclose(torch.tensor(answer), expected, atol=1e-4)


def test_bad_images_get_their_400s_and_their_neighbours_answers(served):
    client, _, _ = served
    bodies = [(_jpeg(400, 100, seed=1), "image/jpeg"), (b'{"inputs": []}', "application/json"),
              (_jpeg(64, 64, seed=2), "image/jpeg")] * 3
    with ThreadPoolExecutor(max_workers=9) as pool:
        answers = list(pool.map(lambda item: client.predict("detector", item[0],
                                                            content_type=item[1], check=False),
                                bodies))
    for index, answer in enumerate(answers):
        if index % 3 == 0:
            assert answer.status == 400 and "over this model's max of 320x320" in answer.message
        elif index % 3 == 1:
            assert answer.status == 400 and "holds no images; send at least one image" in answer.message
        else:
            assert answer.status == 200


def test_tritonclient_binary_v2_one_image_per_request(served, torchserve):
    tritonclient = pytest.importorskip("tritonclient.http")
    _, detector, _ = served
    url = urlsplit(torchserve.config.inference_url).netloc
    client = tritonclient.InferenceServerClient(url=url)
    body = png(96, 128, level=255)
    tensor = tritonclient.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([body], dtype=object), binary_data=True)
    outputs = [tritonclient.InferRequestedOutput(name, binary_data=True)
               for name in ("boxes", "scores", "labels")]
    result = client.infer("detector", [tensor], outputs=outputs, headers={
        "Authorization": f"Bearer {torchserve.config.key('inference')}"})
    with torch.inference_mode():
        expected = detector([_pixels(body)])[0]
    assert result.as_numpy("boxes").shape == tuple(expected["boxes"].shape)
    assert np.allclose(result.as_numpy("scores"), expected["scores"].numpy(), atol=1e-5)
    assert [v.decode() for v in result.as_numpy("labels")] == \
        [LABELS[i] for i in expected["labels"].tolist()]
