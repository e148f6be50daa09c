"""Models that answer each sample with outputs of its own size: a torchvision-style detector (a
list of images of their own sizes in, per image boxes/scores/labels out) and a segmenter (a mask at
each request's own size), through the handler in-process: batches of mixed sizes equal each image
alone in eager, every protocol names the outputs, and bad requests get their 400s."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.errors import SpecError
from handlers.records import GoldenRecord
from model_defs import create_model
from scripts.build import build_archive
from tests.helpers import InProcessHandler, counting_detector, png as _png, save_weights, write_spec

LABELS = ["background", "thing"]


def detector_spec(folder, model, **extra):
    save_weights(model, folder / "detector.pt")
    return write_spec(folder, {
        "name": "detector", "version": "1.0", "arch": "anchor_detector",
        "params": {"num_classes": 2, "channels": 4, "anchor_sizes": [8.0], "detections": 100},
        "weights": "detector.pt",
        "input": {"type": "image", "shape": [3, None, None], "max": [256, 256],
                  "image": {"mode": "RGB", "formats": ["png", "jpeg"]}},
        "batching": "list", "outputs": {"per_sample": True, "names": ["boxes", "scores", "labels"]},
        "labels": LABELS, "serving": {"batch_size": 4}, **extra})


def _served(folder, spec) -> InProcessHandler:
    return InProcessHandler(build_archive(spec, export_path=folder / "store",
                                          archive_format="folder").archive)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detector")
    model = counting_detector()
    served = _served(folder, detector_spec(folder, model))
    served.model = model
    return served


def _eager(model, png: bytes) -> dict:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255
    with torch.inference_mode():
        return model([torch.from_numpy(pixels).permute(2, 0, 1)])[0]


def _raw(png: bytes):
    return {"body": png}, {"body": {"content-type": "image/png"}}


def _assert_detections(answer: dict, expected: dict) -> None:
    assert torch.allclose(torch.tensor(answer["boxes"]).reshape(-1, 4), expected["boxes"], atol=1e-4)
    assert torch.allclose(torch.tensor(answer["scores"]), expected["scores"], atol=1e-5)
    assert answer["labels"] == [LABELS[i] for i in expected["labels"].tolist()]


def test_a_batch_of_mixed_sizes_answers_each_image_as_alone(detector):
    images = [_png(40, 60, seed=1), _png(128, 96, seed=2), _png(8, 8, seed=3), _png(200, 150, seed=4)]
    answers = detector.send([_raw(png)[0] for png in images], [_raw(png)[1] for png in images])
    for png, (body, status, _) in zip(images, answers):
        assert status == 200
        (answer,) = body["outputs"]  # one object per image, its outputs by name
        _assert_detections(answer, _eager(detector.model, png))


def test_zero_boxes_and_a_hundred_in_one_batch(detector):
    black, bright = _png(64, 64, level=0), _png(128, 128, level=255)
    answers = detector.send([_raw(black)[0], _raw(bright)[0]], [_raw(black)[1], _raw(bright)[1]])
    (none,), (hundred,) = (body["outputs"] for body, _, _ in answers)
    assert none == {"boxes": [], "scores": [], "labels": []}
    assert len(hundred["boxes"]) == len(hundred["scores"]) == 100
    assert set(hundred["labels"]) == {"thing"}
    _assert_detections(hundred, _eager(detector.model, bright))


def test_every_protocol_names_the_outputs_per_image(detector):
    png, other = _png(48, 64, seed=5), _png(64, 32, seed=6)
    b64, b64_other = base64.b64encode(png).decode(), base64.b64encode(other).decode()
    expected = _eager(detector.model, png)
    v1 = detector.one({"instances": [{"b64": b64}, {"b64": b64_other}]})[0]
    assert len(v1["predictions"]) == 2
    _assert_detections(v1["predictions"][0], expected)
    _assert_detections(v1["predictions"][1], _eager(detector.model, other))
    tensor = {"name": "input", "datatype": "BYTES", "shape": [1], "data": [b64]}
    v2 = {o["name"]: o for o in detector.one({"inputs": [tensor]})[0]["outputs"]}
    assert v2["boxes"]["shape"] == [len(expected["boxes"]), 4] and v2["boxes"]["datatype"] == "FP32"
    assert v2["labels"]["datatype"] == "BYTES" and set(v2["labels"]["data"]) <= set(LABELS)
    assert torch.allclose(torch.tensor(v2["scores"]["data"]), expected["scores"], atol=1e-5)
    header = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(png) + 4}}],
                         "parameters": {"binary_data_output": True}}).encode()
    body, status, headers = detector.send(
        [{"body": header + struct.pack("<I", len(png)) + png}],
        [{"Inference-Header-Content-Length": str(len(header))}])[0]
    assert status == 200 and int(headers["Inference-Header-Content-Length"]) > 0
    two = dict(tensor, shape=[2], data=[b64, b64_other])
    refused, status, _ = detector.one({"inputs": [two]})
    assert status == 400 and "send one sample per v2 request" in refused["message"]


def test_the_stock_handlers_answer_as_a_processor(tmp_path):
    model = counting_detector()
    served = _served(tmp_path, detector_spec(tmp_path, model, processor="stock_detection_answer"))
    png = _png(16, 24, level=255)
    body, status, _ = served.one({"inputs": {"b64": base64.b64encode(png).decode()}})
    expected = _eager(model, png)
    assert status == 200 and len(body["outputs"][0]) == len(expected["boxes"]) > 0
    first = body["outputs"][0][0]
    assert set(first) == {"thing", "score"} and len(first["thing"]) == 4


@pytest.mark.parametrize("request_, rule", [
    ({"inputs": []}, "`inputs` holds no images; send at least one image"),
    ({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [0], "data": []}]},
     "holds no images; send at least one image"),
    ({"instances": []}, "`instances` must be a non-empty list"),
])
def test_a_request_with_no_image_gets_a_400_naming_the_rule(detector, request_, rule):
    body, status, _ = detector.one(request_)
    assert status == 400 and rule in body["message"]


def test_an_image_over_max_gets_a_400_and_its_neighbour_an_answer(detector):
    big, small = _png(300, 100, seed=7), _png(30, 30, seed=8)
    (refused, status, _), (fine, ok, _) = detector.send([_raw(big)[0], _raw(small)[0]],
                                                        [_raw(big)[1], _raw(small)[1]])
    assert status == 400 and "is 100x300 (width x height), over this model's max of 256x256" \
        in refused["message"]
    assert ok == 200 and fine["outputs"][0]["boxes"] is not None


def test_an_image_with_no_box_is_a_valid_golden_case(tmp_path):
    never = counting_detector(gain=0.0)  # no image ever gets a box
    spec = detector_spec(tmp_path, never)
    result = build_archive(spec, export_path=tmp_path / "store", archive_format="folder")
    assert all(len(boxes) == 0 for _, outputs in result.golden.cases for boxes in outputs["boxes"])
    served = InProcessHandler(result.archive)  # the worker's golden check passes on it
    body, status, _ = served.send(*[[x] for x in _raw(_png(32, 32, level=255))])[0]
    assert status == 200 and body["outputs"] == [{"boxes": [], "scores": [], "labels": []}]
    record = GoldenRecord.read(result.archive)
    moved = [(i, {k: [t + 1 for t in v] for k, v in o.items()}) for i, o in record.cases]
    assert GoldenRecord(moved, record.rtol, record.atol).compare(
        [o for _, o in record.cases]).within  # empty lists compare equal...
    extra = [(i, {k: [torch.zeros(1, *t.shape[1:]) for t in v] for k, v in o.items()})
             for i, o in record.cases]
    assert not GoldenRecord(extra, record.rtol, record.atol).compare(
        [o for _, o in record.cases]).within  # ...and a box more is a difference


def test_a_segmentation_mask_comes_back_at_each_requests_own_size(tmp_path):
    torch.manual_seed(0)
    model = create_model("fcn_segmenter", num_classes=3, channels=8).eval()
    save_weights(model, tmp_path / "segmenter.pt")
    spec = write_spec(tmp_path, {
        "name": "segmenter", "version": "1.0", "arch": "fcn_segmenter",
        "params": {"num_classes": 3, "channels": 8}, "weights": "segmenter.pt",
        "input": {"type": "image", "shape": [3, None, None], "max": [128, 128],
                  "image": {"mode": "RGB", "formats": ["png"]}},
        "outputs": [{"name": "out", "follows": "input"}], "serving": {"batch_size": 4}})
    served = _served(tmp_path, spec)
    images = [_png(30, 50, seed=9), _png(64, 64, seed=10), _png(30, 50, seed=11), _png(7, 120, seed=12)]
    answers = served.send([_raw(png)[0] for png in images], [_raw(png)[1] for png in images])
    for png, (body, status, _) in zip(images, answers):
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255
        with torch.inference_mode():
            expected = model(torch.from_numpy(pixels).permute(2, 0, 1)[None])["out"][0]
        mask = torch.tensor(body["outputs"][0])
        assert status == 200 and mask.shape == expected.shape == (3, *pixels.shape[:2])
        assert torch.allclose(mask, expected, atol=1e-5)


def test_outputs_that_do_not_fit_describe_one_sample_and_the_line_that_fits(tmp_path):
    model = counting_detector()
    spec = detector_spec(tmp_path, model, outputs=["boxes", "scores", "labels"])
    with pytest.raises(SpecError) as refused:
        build_archive(spec, export_path=tmp_path / "store")
    message = str(refused.value)
    assert "forward() returned a list of 4 dicts, one per sample of the batch; one sample returned "\
           "{boxes: Tensor[" in message and "labels: Tensor[" in message
    line = "outputs: {per_sample: true, names: [boxes, scores, labels]}"
    assert f"The spec line that fits it: `{line}`" in message
    fixed = detector_spec(tmp_path, model,
                          outputs={"per_sample": True, "names": ["boxes", "scores", "labels"]})
    assert build_archive(fixed, export_path=tmp_path / "store").archive.is_file()
    missing = detector_spec(tmp_path, model, outputs={"per_sample": True,
                                                      "names": ["boxes", "masks"]})
    with pytest.raises(SpecError, match=r"one sample returned \{boxes: .*\}, without masks\. The "
                                        r"spec line that fits it: `outputs: \{per_sample: true, "
                                        r"names: \[boxes, scores, labels\]\}`"):
        build_archive(missing, export_path=tmp_path / "store")


def test_a_batch_model_marked_per_sample_is_told_to_drop_it(tmp_path):
    torch.manual_seed(0)
    model = create_model("fcn_segmenter").eval()
    save_weights(model, tmp_path / "s.pt")
    data = {"name": "seg", "version": "1", "arch": "fcn_segmenter", "weights": "s.pt",
            "input": {"type": "image", "shape": [3, None, None], "max": [32, 32]},
            "outputs": {"per_sample": True, "names": ["out"]}}
    with pytest.raises(SpecError, match=r"forward\(\) returned \{out: Tensor\[.*\] float32\} for a batch "
                                        r"of 1, not one result per sample\. The spec line that "
                                        r"fits it: `outputs: \[out\] \(without per_sample\)`"):
        build_archive(write_spec(tmp_path, data), export_path=tmp_path / "store")
    fixed = write_spec(tmp_path, {**data, "outputs": ["out"]})
    assert build_archive(fixed, export_path=tmp_path / "store").archive.is_file()


def _export(tmp_path, spec_data, runtime):
    spec = write_spec(tmp_path, {**spec_data, "serving": {**spec_data.get("serving", {}),
                                                          "runtime": runtime}}, f"{runtime}.yaml")
    return build_archive(spec, export_path=tmp_path / "store", archive_format="folder")


def test_a_detector_is_refused_for_export_with_torch_exports_reason(tmp_path):
    from handlers.errors import ExportError

    model = counting_detector()
    data = yaml_data(detector_spec(tmp_path, model))
    with pytest.raises(ExportError, match="torch.export cannot capture the model for every input "
                                          "the spec allows .*data-dependent expression"):
        _export(tmp_path, data, "onnx")
    assert not (tmp_path / "store").exists()


def test_a_segmenter_exports_where_it_can_be_proven_equal(tmp_path):
    from handlers.errors import ExportError

    torch.manual_seed(0)
    model = create_model("fcn_segmenter", num_classes=3, channels=8).eval()
    save_weights(model, tmp_path / "seg.pt")
    data = {"name": "seg", "version": "1", "arch": "fcn_segmenter", "weights": "seg.pt",
            "params": {"num_classes": 3, "channels": 8},
            "input": {"type": "image", "shape": [3, None, None], "max": [64, 64], "min": [8, 8]},
            "outputs": [{"name": "out", "follows": "input"}], "serving": {"batch_size": 2}}
    built = _export(tmp_path, data, "onnx")  # proven equal on every golden case and at batch 1
    assert built.exported.max_error < 1e-4
    served = InProcessHandler(built.archive)
    pixels = torch.rand(3, 20, 36)
    body, status, _ = served.one({"inputs": pixels.tolist()})
    with torch.inference_mode():
        expected = model(pixels[None])["out"][0]
    assert status == 200 and torch.allclose(torch.tensor(body["outputs"][0]), expected, atol=1e-4)
    with pytest.raises(ExportError, match="out: another shape .the artifact fixed a dimension"):
        _export(tmp_path, data, "torchscript")  # its trace fixes the upsampling size
    small, status, _ = served.one({"inputs": torch.rand(3, 4, 36).tolist()})
    assert status == 400 and "under its min of 8 (the spec's `min`)" in small["message"]


def yaml_data(spec_path) -> dict:
    import yaml

    return yaml.safe_load(spec_path.read_text())


def test_a_per_sample_model_exports_an_artifact_called_per_sample(tmp_path):
    from torch import nn

    from handlers.runtimes import load_exported
    from handlers.spec import load_spec
    from model_defs.registry import _REGISTRY, register_model
    from scripts.build import validate
    from scripts.export import export_artifact

    @register_model("test_only_per_image")
    class PerImage(nn.Module):  # a list in, per image a colour and a mask of its own size
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, images):
            return [{"colour": image.mean(dim=(1, 2)), "mask": self.conv(image[None])[0]}
                    for image in images]

    try:
        torch.manual_seed(0)
        model = PerImage().eval()
        save_weights(model, tmp_path / "p.pt")
        data = {"name": "per_image", "version": "1", "arch": "test_only_per_image",
                "weights": "p.pt", "batching": "list",
                "input": {"type": "image", "shape": [3, None, None], "max": [48, 48], "min": [4, 4]},
                "outputs": {"per_sample": True, "names": ["colour", "mask"]},
                "serving": {"batch_size": 3}}
        spec = load_spec(write_spec(tmp_path, {**data, "serving": {"batch_size": 3,
                                                                      "runtime": "onnx"}}))
        loaded, golden = validate(spec, tmp_path / "p.pt")  # the build's own two steps
        artifact = export_artifact(spec, loaded.model, golden, tmp_path)  # proven on every case
        assert artifact.max_error < 1e-4
        exported = load_exported(spec, artifact.path, torch.device("cpu"), target_device="cpu")
        images = [torch.rand(3, 10, 30), torch.rand(3, 47, 5)]  # a batch: called per sample
        answers = exported({"input": images})
        with torch.inference_mode():
            expected = model(images)
        for i, want in enumerate(expected):
            assert answers["mask"][i].shape == want["mask"].shape
            assert torch.allclose(answers["mask"][i], want["mask"], atol=1e-5)
            assert torch.allclose(answers["colour"][i], want["colour"], atol=1e-5)
    finally:
        del _REGISTRY["test_only_per_image"]
