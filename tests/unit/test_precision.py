"""Reduced precision at build and in the worker: the spec's forms and refusals, bf16 and int8
(dynamic on eager, static on ONNX Runtime) built, gated against fp32 eager on request samples,
recorded, and served reproducing their own golden outputs."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
import torch

from handlers.errors import PrecisionError, SpecError
from handlers.spec import parse_spec
from scripts.build import build_archive
from scripts.examples.digits import load_split, train
from tests.helpers import InProcessHandler, digits_spec_data, example_spec, save_weights, write_spec

SPLIT = load_split()
DIGITS = SPLIT.test_images[:, 0]  # held back from training


@pytest.fixture(scope="module")
def trained():
    """The digits CNN trained a few epochs: logits with real margins, as served models have."""
    return train(SPLIT, digits_spec_data()["params"], epochs=8)


@pytest.fixture
def digits(tmp_path, trained):
    save_weights(trained, tmp_path / "digits.pt")
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(48):  # held-back digits, each a request sample
        np.save(samples / f"{i:03d}.npy", DIGITS[i][None])
    return tmp_path, trained


def _spec(folder, precision, runtime="eager", **serving):
    data = digits_spec_data(weights="digits.pt")
    data["serving"] = {**data["serving"], "precision": precision, "runtime": runtime, **serving}
    return write_spec(folder, data, f"spec-{len(list(folder.glob('spec-*')))}.yaml")


def _record(archive) -> dict:
    with zipfile.ZipFile(archive) as mar:
        return json.loads(mar.read("build-info.json"))


@pytest.mark.parametrize("precision, runtime, refusal", [
    ({"dtype": "int8", "mode": "static"}, "eager",
     re.escape("runtime aoti (pt2e + AOTInductor) or onnx")),
    ("bf16", "onnx", "ONNX Runtime's CPU provider has no bfloat16 Conv"),
    ({"dtype": "int8", "mode": "dynamic"}, "aoti", "is served by the eager runtime"),
    ({"dtype": "bf16", "mode": "static"}, "eager", "applies to int8 only"),
    ({"dtype": "int8", "mode": "dynamic", "calibration": {"files": "c"}}, "eager",
     "calibrates static int8 only"),
    ({"dtype": "bf16", "accept": {"top5": 0.9}}, "eager", "must map gate figures"),
])
def test_each_precision_the_runtime_cannot_serve_is_refused_with_the_reason(precision, runtime,
                                                                           refusal):
    data = digits_spec_data()
    data["serving"] = {**data["serving"], "precision": precision, "runtime": runtime}
    with pytest.raises(SpecError, match=refusal):
        parse_spec(data)


def test_int8_mode_follows_the_runtime_and_the_spec_round_trips():
    data = digits_spec_data()
    data["serving"] = {**data["serving"], "precision": "int8"}
    assert parse_spec(data).serving.precision_settings.mode == "dynamic"
    data["serving"]["runtime"] = "onnx"
    spec = parse_spec(data)
    assert spec.serving.precision_settings.mode == "static"
    from handlers.spec import spec_to_dict

    again = parse_spec(spec_to_dict(spec))
    assert again.serving == spec.serving


def test_bf16_is_gated_recorded_and_served(digits):
    folder, model = digits
    result = build_archive(_spec(folder, {"dtype": "bf16", "evaluation": {"files": "samples"}}),
                           export_path=folder / "store", archive_format="folder")
    assert result.gate.samples == 48 and result.gate.figures["top1_agreement"] >= 0.99
    record = _record_folder(result.archive)
    assert record["precision"]["gate"]["figures"] == result.gate.figures
    assert record["host"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    served = InProcessHandler(result.archive)  # reproduces its own bf16 outputs
    body, status, _ = served.one({"inputs": DIGITS[100][None].tolist()})
    with torch.inference_mode():
        expected = model(torch.from_numpy(DIGITS[100][None, None]))[0]
    assert status == 200 and torch.allclose(torch.tensor(body["outputs"][0]), expected, atol=0.1)


def _record_folder(folder) -> dict:
    return json.loads((folder / "build-info.json").read_text())


def test_static_int8_on_onnx_runtime_is_calibrated_on_request_samples(digits):
    folder, model = digits
    spec = _spec(folder, {"dtype": "int8", "calibration": {"files": "samples", "count": 32}},
                 runtime="onnx")
    result = build_archive(spec, export_path=folder / "store", archive_format="folder")
    assert result.calibration == "32 samples from samples"
    assert result.gate.figures["top1_agreement"] >= 0.98
    served = InProcessHandler(result.archive)  # its golden record is its own int8 outputs
    digits_batch = DIGITS[200:208][:, None]
    body, status, _ = served.one({"inputs": digits_batch.tolist()})
    with torch.inference_mode():
        expected = model(torch.from_numpy(digits_batch))
    got = torch.tensor(body["outputs"])
    assert status == 200 and (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.875
    assert float((got - expected).abs().max()) < 0.5


def test_dynamic_int8_quantizes_a_text_models_linear_layers(tmp_path):
    spec, model = example_spec(tmp_path, "sentiment",
                               serving={"batch_size": 4, "precision": "int8"})
    result = build_archive(spec, export_path=tmp_path / "store", archive_format="folder")
    assert result.gate.figures["top1_agreement"] >= 0.98
    assert "poor calibration and evaluation set" in result.gate.source
    served = InProcessHandler(result.archive)
    body, status, _ = served.one({"inputs": {"input_ids": "the movie was good"}})
    assert status == 200 and set(body["outputs"]) == {"logits", "token_states"}


def test_a_gate_beyond_its_bar_fails_naming_every_figure_and_writes_nothing(digits):
    folder, _ = digits
    strict = {"dtype": "bf16", "evaluation": {"files": "samples"},
              "accept": {"max_rel_error": 1e-6}}
    with pytest.raises(PrecisionError) as refused:
        build_archive(_spec(folder, strict), export_path=folder / "store")
    message = str(refused.value)
    assert "fails its accuracy gate: max_rel_error" in message and "(bar 1e-06)" in message
    assert "top1_agreement" in message and "lower the bar in serving.precision.accept" in message
    assert not (folder / "store").exists()
    relaxed = {**strict, "accept": {"max_rel_error": 0.1}}  # the fix the message names
    assert build_archive(_spec(folder, relaxed), export_path=folder / "store").archive.is_file()


def test_a_file_that_is_not_a_sample_is_refused_by_name(digits):
    folder, _ = digits
    np.save(folder / "samples" / "zz-wrong.npy", np.zeros((3, 3), np.float32))
    with pytest.raises(PrecisionError, match="zz-wrong.npy is not a sample this model takes"):
        build_archive(_spec(folder, {"dtype": "bf16", "evaluation": {"files": "samples"}}),
                      export_path=folder / "store")
