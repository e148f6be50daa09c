"""Exported runtimes: built from the same state_dict, proven equal to eager, or not built."""

import json
import zipfile

import pytest
import torch
import yaml
from torch import nn

from handlers.errors import IntegrityError, MarError, SpecError
from handlers.records import BuildRecord
from handlers.runtimes import RUNTIMES, load_exported
from handlers.spec import PRECISIONS, load_spec
from handlers.startup import load_archive_model
from scripts.build import build_archive
from scripts.export import exporter_of
from tests.helpers import digits_spec_data, save_weights, write_spec


def _digits(tmp_path, digits_model, **serving):
    save_weights(digits_model, tmp_path / "digits.pt")
    data = digits_spec_data(weights="digits.pt")
    data["serving"].update(serving)
    return write_spec(tmp_path, data)


@pytest.mark.parametrize("runtime", ["torchscript", "onnx"])
def test_exported_archive_serves_what_eager_serves(tmp_path, digits_model, runtime):
    built = build_archive(_digits(tmp_path, digits_model, runtime=runtime),
                          export_path=tmp_path / "store", archive_format="folder")
    artifact = {"torchscript": "model.ts.pt", "onnx": "model.onnx"}[runtime]
    record = BuildRecord.read(built.archive)
    assert record.weights.file == artifact and not (built.archive / "digits.pt").exists()
    assert record.runtime["name"] == runtime and record.runtime["target_device"] == "cpu"
    assert record.runtime["eager_weights_sha256"] == built.weights_sha256
    assert record.runtime["max_abs_error_vs_eager"] < 1e-4
    loaded = load_archive_model(built.archive)
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))  # not the golden
    with torch.inference_mode():
        assert torch.allclose(loaded.model_io({"input": images})["output"], digits_model(images),
                              atol=1e-5)


def test_a_model_with_data_dependent_control_flow_is_not_built(tmp_path):
    from model_defs.registry import _REGISTRY, register_model

    @register_model("test_only_branching")
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # tracing would record one side and stay silent about the other
                return self.linear(x)
            return -self.linear(x)

    try:
        torch.save(Branching().state_dict(), tmp_path / "w.pt")
        spec = write_spec(tmp_path, {"name": "b", "version": "1", "arch": "test_only_branching",
                                     "weights": "w.pt", "input": {"shape": [4]},
                                     "serving": {"runtime": "onnx", "batch_size": 4}})
        with pytest.raises(MarError) as err:
            build_archive(spec, export_path=tmp_path / "store")
        message = str(err.value)
        assert "serving.runtime onnx: torch.export cannot capture the model" in message
        assert "Nothing was written. Serve it with serving.runtime: eager" in message
        assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
    finally:
        del _REGISTRY["test_only_branching"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_aoti_for_a_gpu_needs_cuda_at_build(tmp_path, digits_model):
    with pytest.raises(MarError, match="runtime aoti with serving.device: gpu compiles CUDA code, "
                                       "which needs a GPU"):
        build_archive(_digits(tmp_path, digits_model, runtime="aoti", device="gpu"),
                      export_path=tmp_path / "store")


def test_an_aoti_artifact_refuses_another_device(tmp_path, digits_model):
    spec = load_spec(_digits(tmp_path, digits_model, runtime="aoti"))
    with pytest.raises(IntegrityError, match="compiled by AOTInductor for cuda, and this worker "
                                             "serves on cpu"):
        load_exported(spec, tmp_path / "model.pt2", torch.device("cpu"), target_device="cuda")


@pytest.mark.parametrize("serving,message", [
    ({"runtime": "tensorrt"}, "`serving.runtime` 'tensorrt' is not one of eager, torchscript"),
    ({"runtime": "onnx", "compile": True}, "`serving.compile` applies to the eager runtime"),
    ({"runtime": "onnx", "precision": "bf16"}, "onnx with precision bf16 is not supported"),
])
def test_runtime_settings_are_validated(tmp_path, serving, message):
    data = digits_spec_data()
    data["serving"].update(serving)
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_spec(write_spec(tmp_path, data))


def test_the_archive_carries_the_artifact_and_model_config(tmp_path, digits_model):
    built = build_archive(_digits(tmp_path, digits_model, runtime="onnx"),
                          export_path=tmp_path / "store")
    with zipfile.ZipFile(built.archive) as mar:
        spec = yaml.safe_load(mar.read("spec.yaml"))
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        assert "model.onnx" in mar.namelist() and "digits.pt" not in mar.namelist()
    assert spec["weights"] == "model.onnx" and spec["serving"]["runtime"] == "onnx"
    assert manifest["model"]["serializedFile"] == "model.onnx"


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_every_runtime_entry_is_complete(name):
    runtime = RUNTIMES[name]
    assert runtime.name == name and runtime.label
    if runtime.exported:
        assert callable(runtime.load)
        assert callable(exporter_of(runtime)), runtime.exporter
        assert runtime.artifact not in {r.artifact for r in RUNTIMES.values() if r is not runtime}
    else:
        assert runtime.load is None and runtime.exporter is None
    from handlers.precision import INT8_MODES

    keys = set(PRECISIONS) - {"int8"} | {f"int8 {mode}" for mode in INT8_MODES}
    assert set(runtime.refused_precisions) <= keys, runtime.refused_precisions


def test_a_request_of_more_samples_than_the_batch_size_is_answered_in_passes(tmp_path,
                                                                            digits_model):
    """An artifact is built and proven for batches of 1 to batch_size; one request may hold more
    (here 3x), and the worker runs it in passes of at most batch_size (an AOTInductor artifact
    fed more once answered with batch_size rows, silently: tests/integration/
    test_precision_served.py sends it 96)."""
    from tests.helpers import InProcessHandler

    built = build_archive(_digits(tmp_path, digits_model, runtime="onnx", batch_size=4),
                          export_path=tmp_path / "store", archive_format="folder")
    served = InProcessHandler(built.archive)
    images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    handler = served.handler
    passes = handler.batch([handler.decode_request({"body": json.dumps(
        {"inputs": images.tolist()}).encode()})])
    assert [len(p.inputs["input"]) for p in passes] == [4, 4, 4]
    body, status, _ = served.one({"inputs": images.tolist()})
    with torch.inference_mode():
        expected = digits_model(images)
    assert status == 200 and torch.allclose(torch.tensor(body["outputs"]), expected, atol=1e-5)
