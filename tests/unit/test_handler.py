"""The handler in-process with TorchServe's own Context, and from an extracted archive alone."""

import json
import subprocess
import sys
import zipfile

import pytest
import torch

from handlers.model_handler import ModelHandler
from scripts.build import build_archive
from scripts.verify import env_without_repository
from tests.conftest import REPO_ROOT
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


ARCHIVE_ONLY = r"""
import json, os, sys, torch
repo = sys.argv[2]
# Forget every route to the repository: its path entry and the editable-install finder.
sys.path[:] = [sys.argv[1]] + [p for p in sys.path if p and os.path.realpath(p) != repo]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
from ts.context import Context, RequestProcessor
import model_handler
context = Context("digits_cnn", sys.argv[1], {}, 1, None, "0.12.0")
context.request_processor = [RequestProcessor({})]
model_handler.handle(None, context)
torch.manual_seed(5)
inputs = torch.rand(2, 1, 8, 8).tolist()
out = model_handler.handle([{"body": json.dumps({"inputs": inputs}).encode()}], context)
loaded = sorted({m.__file__ for m in list(sys.modules.values())
                 if getattr(m, "__file__", None) and m.__name__.split(".")[0] in
                 ("model_handler", "handlers", "model_defs", "scripts")})
print(json.dumps({"outputs": json.loads(out[0])["outputs"], "inputs": inputs, "files": loaded}))
"""


def test_extracted_archive_serves_without_the_repository(model_dir, digits_model, tmp_path):
    result = subprocess.run([sys.executable, "-c", ARCHIVE_ONLY, str(model_dir), str(REPO_ROOT)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env=env_without_repository())
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["files"] and all(f.startswith(str(model_dir)) for f in answer["files"])
    with torch.inference_mode():
        expected = digits_model(torch.tensor(answer["inputs"]))
    assert torch.allclose(torch.tensor(answer["outputs"]), expected, atol=1e-5)


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
