"""The handler in-process with TorchServe's own Context and loader."""

import json
import sys
import zipfile

import pytest
import torch

from handlers.model_handler import ModelHandler
from scripts.build import build_archive
from ts.context import Context, RequestProcessor


@pytest.fixture
def model_dir(digits_spec, tmp_path):
    """A built digits archive, extracted as TorchServe extracts it."""
    archive = build_archive(digits_spec, export_path=tmp_path / "store").archive
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(folder)
    return folder


def _context(model_dir, batch_size: int) -> Context:
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    context = Context("digits_cnn", str(model_dir), manifest, batch_size, None, "0.12.0")
    context.request_processor = [RequestProcessor({}) for _ in range(batch_size)]
    return context


def _request(inputs) -> dict:
    return {"body": json.dumps({"inputs": inputs}).encode()}


def test_batch_with_a_malformed_request_answers_the_valid_ones(model_dir, digits_model):
    handler = ModelHandler()
    handler.initialize(_context(model_dir, 1))
    images = torch.rand(3, 1, 8, 8)
    batch = [_request(images[0].tolist()), _request([[1, 2]]), _request(images[1:].tolist()),
             {"body": b"{not json"}, {"body": {"input": []}}]
    context = _context(model_dir, len(batch))
    responses = [json.loads(body) for body in handler.handle(batch, context)]
    with torch.inference_mode():
        expected = digits_model(images)
    assert len(responses) == 5
    assert torch.allclose(torch.tensor(responses[0]["outputs"]), expected[:1], atol=1e-5)
    assert torch.allclose(torch.tensor(responses[2]["outputs"]), expected[1:], atol=1e-5)
    assert [p["label"] for p in responses[2]["predictions"]] == [str(i) for i in expected[1:].argmax(1).tolist()]
    assert [context.get_response_status(i)[0] for i in range(5)] == [200, 400, 200, 400, 400]
    assert {context.get_response_content_type(i) for i in range(5)} == {"application/json"}
    assert "`inputs` has shape [1, 2]; expected one sample of shape [1, 8, 8]" in responses[1]["message"]
    assert "dtype float32" in responses[1]["message"]
    assert "request body is not valid JSON" in responses[3]["message"]
    assert 'expected a JSON object {"inputs": ...}' in responses[4]["message"]


def test_prediction_probabilities_sum_to_one(model_dir):
    handler = ModelHandler()
    handler.initialize(_context(model_dir, 1))
    response = json.loads(handler.handle([_request(torch.rand(1, 8, 8).tolist())],
                                         _context(model_dir, 1))[0])
    prediction = response["predictions"][0]
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction["probability"] == max(prediction["probabilities"].values())


def test_kserve_v1_instances_get_predictions_back(model_dir, digits_model):
    handler = ModelHandler()
    handler.initialize(_context(model_dir, 1))
    images = torch.rand(2, 1, 8, 8)
    context = _context(model_dir, 2)
    answers = [json.loads(body) for body in handler.handle(
        [{"body": {"instances": images.tolist()}}, {"body": {"instances": images[0].tolist()}}],
        context)]
    with torch.inference_mode():
        expected = digits_model(images)
    assert [p["label"] for p in answers[0]["predictions"]] == [str(int(i)) for i in expected.argmax(1)]
    assert torch.allclose(torch.tensor([p["outputs"] for p in answers[0]["predictions"]]), expected,
                          atol=1e-5)
    assert context.get_response_status(1)[0] == 400  # instances is a list of samples
    assert "`instances` has shape [1, 8, 8]" in answers[1]["message"]


@pytest.mark.parametrize("envelope", [None, "kserve", "kservev2"])
def test_handler_refuses_to_start_behind_a_request_envelope(model_dir, monkeypatch, envelope):
    """TorchServe's own loader, as the worker runs it with TS_SERVICE_ENVELOPE applied."""
    from ts.model_loader import TsModelLoader

    monkeypatch.syspath_prepend(str(model_dir))
    monkeypatch.delitem(sys.modules, "model_handler", raising=False)  # a fresh worker's import
    load = lambda: TsModelLoader().load("digits_cnn", str(model_dir), handler="model_handler.py",
                                        gpu_id=None, batch_size=1, envelope=envelope)
    try:
        if envelope is None:
            assert load().context.model_name == "digits_cnn"
        else:
            with pytest.raises(RuntimeError) as err:
                load()
            assert f"request envelope `{envelope}`" in str(err.value)
            assert "Set enable_envvars_config=false" in str(err.value)
    finally:
        sys.modules.pop("model_handler", None)
