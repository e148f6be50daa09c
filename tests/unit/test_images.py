"""Encoded images in: JPEG, PNG and WebP in every request form, preprocessed as the spec declares,
and every bad image a 400 of its own."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.kinds.image import preprocess
from handlers.errors import RequestError
from handlers.io_spec import InputSpec
from handlers.kinds.image import ImageSpec
from scripts.build import build_archive
from tests.helpers import InProcessHandler as Served, digits_png_spec

DIGIT = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)  # a gradient, 0..252


def _encoded(pixels: np.ndarray, kind: str, mode: str = "L") -> bytes:
    out = io.BytesIO()
    options = {"lossless": True} if kind == "WEBP" else {"quality": 100} if kind == "JPEG" else {}
    Image.fromarray(pixels, mode).save(out, format=kind, **options)
    return out.getvalue()


def _raw(data: bytes, content_type: str | None):
    return {"body": data}, ({"body": {"content-type": content_type}} if content_type else {})


@pytest.fixture(scope="module")
def digits_png(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits_png")
    spec, model = digits_png_spec(folder)
    archive = build_archive(spec, export_path=folder / "store", archive_format="folder").archive
    served = Served(archive)
    served.model = model
    return served


def test_every_form_of_one_image_gets_the_eager_answer(digits_png):
    with torch.inference_mode():
        expected = digits_png.model(torch.from_numpy(DIGIT / np.float32(255))[None, None])[0]
    png = _encoded(DIGIT, "PNG")
    b64 = base64.b64encode(png).decode()
    requests = [_raw(png, "image/png"), _raw(_encoded(DIGIT, "WEBP"), "image/webp"),
                ({"input": png}, {"input": {"content-type": "image/png"}}),  # multipart
                ({"body": json.dumps({"inputs": {"b64": b64}}).encode()}, {}),
                ({"body": json.dumps({"instances": [{"b64": b64}, {"b64": b64}]}).encode()}, {}),
                ({"body": json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                                  "data": [b64]}]}).encode()}, {})]
    answers = digits_png.send([r for r, _ in requests], [h for _, h in requests])
    assert [status for _, status, _ in answers] == [200] * len(requests)
    for body, _, _ in answers[:4]:
        assert torch.allclose(torch.tensor(body["outputs"][0]), expected, atol=1e-5)
    v1, v2 = answers[4][0], answers[5][0]
    assert len(v1["predictions"]) == 2 and "label" in v1["predictions"][0]
    assert np.allclose(v2["outputs"][0]["data"], expected.numpy(), atol=1e-5)
    jpeg, _, _ = digits_png.send(*zip(_raw(_encoded(DIGIT, "JPEG"), "image/jpeg")))[0]
    assert torch.allclose(torch.tensor(jpeg["outputs"][0]), expected, atol=0.05)  # lossy, close


BAD = {
    "not an image": (b"just some bytes" * 20, "image/png", "is not a readable png, jpeg, webp image"),
    "corrupt": (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "image/png", "corrupt or truncated image"),
    "truncated": (None, "image/png", "corrupt or truncated image"),
    "wrong content type": (None, "text/plain", "Content-Type text/plain is not an image type"),
    "missing content type": (None, None, "Content-Type (none) is not an image type"),
    "over the pixel limit": ("big", "image/png", "over the limit of 1,000,000 (image.max_pixels)"),
    "unsupported format": ("gif", "image/gif", "Content-Type image/gif is not an image type"),
    "unsupported format named by a wrong type": ("gif", "image/png",
                                                 "not a readable png, jpeg, webp image (the formats this model takes"),
    "empty body": (b"", "image/png", "is empty; send a PNG/JPEG/WEBP image"),
    "wrong size": ("small", "image/png", "is 4x4; this model takes 8x8 images"),
}


def _bad_bytes(kind):
    if kind is None:
        return _encoded(DIGIT, "PNG")[:-20]
    if kind == "big":
        return _encoded(np.zeros((1100, 1000), dtype=np.uint8), "PNG")
    if kind == "gif":
        out = io.BytesIO()
        Image.fromarray(DIGIT, "L").save(out, format="GIF")
        return out.getvalue()
    if kind == "small":
        return _encoded(DIGIT[:4, :4], "PNG")
    return kind


@pytest.mark.parametrize("case", BAD)
def test_a_bad_image_is_a_400_and_its_neighbours_are_answered(digits_png, case):
    data, content_type, message = BAD[case]
    if case == "wrong content type" or case == "missing content type":
        data = _encoded(DIGIT, "PNG")
    else:
        data = _bad_bytes(data) if not isinstance(data, bytes) or data is None else data
    if case == "truncated":  # noise, so its data stream is long enough to cut into
        noise = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
        data = _encoded(noise, "PNG")[:-40]
    good = _raw(_encoded(DIGIT, "PNG"), "image/png")
    answers = digits_png.send([_raw(data, content_type)[0], good[0]], [_raw(data, content_type)[1], good[1]])
    (bad, bad_status, _), (ok, ok_status, _) = answers
    assert bad_status == 400 and message in bad["message"], bad["message"]
    assert ok_status == 200 and "outputs" in ok


def test_preprocessing_follows_the_spec():
    spec = InputSpec(shape=(3, 224, 224), type="image", image=ImageSpec(
        resize=256, center_crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    solid = np.full((300, 400, 3), (10, 128, 250), dtype=np.uint8)
    array = preprocess(_encoded(solid, "PNG", "RGB"), spec, "an image")
    assert array.shape == (3, 224, 224) and array.dtype == np.float32
    want = (np.array([10, 128, 250], dtype=np.float32) / 255 - np.array(spec.image.mean)) / \
        np.array(spec.image.std)
    assert np.allclose(array[:, 112, 112], want, atol=1e-6)
    # the shorter side to 256 keeps the aspect: a 300x400 (h x w) image crops from 256x341
    ramp = np.tile((np.arange(400) % 256).astype(np.uint8)[None, :, None], (300, 1, 3))
    cropped = preprocess(_encoded(ramp, "PNG", "RGB"), spec, "an image")
    assert cropped.shape == (3, 224, 224)
    tiny = preprocess(_encoded(np.full((10, 10, 3), 255, np.uint8), "PNG", "RGB"), spec, "an image")
    assert tiny.shape == (3, 224, 224)  # resized up to 256, then cropped


def test_max_pixels_rules_above_pillows_own_bomb_limit():
    """Pillow refuses outright past 178,956,970 pixels; a spec that allows more is obeyed, and a
    declared size past the spec's limit is refused by name however Pillow reports it."""
    from scripts.bench.hostile import png_declaring

    spec = InputSpec(shape=(1, 8, 8), type="image",
                     image=ImageSpec(mode="L", resize=8, center_crop=8, max_pixels=300_000_000))
    allowed = png_declaring(20_000, 10_000)  # 200 M pixels: over Pillow's limit, under the spec's
    with pytest.raises(RequestError) as err:
        preprocess(allowed, spec, "the image")
    assert "corrupt or truncated image" in str(err.value)  # opened and decoded, not refused
    with pytest.raises(RequestError, match=r"is over the limit of 300,000,000 pixels \(image\.max_pixels"):
        preprocess(png_declaring(40_000, 40_000), spec, "the image")
    with pytest.raises(RequestError, match=r"is 20000x20000 = 400,000,000 pixels, over the limit of "
                                           r"300,000,000 \(image\.max_pixels\)"):
        preprocess(png_declaring(20_000, 20_000), spec, "the image")
