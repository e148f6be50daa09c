"""The one loading path: strict, prefix-normalised, weights_only, with a readable report."""


import pytest
import torch

from handlers.checkpoint import read_checkpoint
from handlers.construction import build_model
from handlers.device import input_dtype, select_device
from handlers.errors import WeightsError
from handlers.golden_inputs import golden_inputs
from handlers.spec import load_spec
from model_defs import create_model
from tests.helpers import digits_spec_data, write_spec

CPU = torch.device("cpu")


def test_loaded_model_matches_the_trained_one(digits_spec, digits_model):
    spec = load_spec(digits_spec)
    model = build_model(spec, spec.weights_path(), device=CPU).model
    batch = golden_inputs(spec)[0]["input"][:4]
    assert not model.training
    with torch.inference_mode():
        assert torch.equal(model(batch), digits_model(batch))


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "optimizer": {"lr": 0.1}, "epoch": 3},
    lambda sd: {"model": sd, "epoch": 3},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {f"_orig_mod.module.{k}": v for k, v in sd.items()},
], ids=["plain", "state_dict-wrapper", "model-wrapper", "ddp-prefix", "compile-and-ddp"])
def test_training_layouts_are_normalised(tmp_path, digits_model, wrap):
    torch.save(wrap(digits_model.state_dict()), tmp_path / "ckpt.pt")
    loaded = read_checkpoint(tmp_path / "ckpt.pt").state_dict
    expected = digits_model.state_dict()
    assert sorted(loaded) == sorted(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_mismatch_report_lists_every_key(tmp_path, digits_model):
    torch.save(digits_model.state_dict(), tmp_path / "digits.pt")
    spec = load_spec(write_spec(tmp_path, digits_spec_data(
        weights="digits.pt", params={"channels": 8, "hidden": 64, "num_classes": 10})))
    with pytest.raises(WeightsError) as err:
        build_model(spec, spec.weights_path(), device=CPU)
    message = str(err.value)
    assert "shape differs (5)" in message
    assert "features.0.weight: checkpoint [16, 1, 3, 3] vs model [8, 1, 3, 3]" in message
    assert str(spec.source) in message and "digits.pt" in message
    assert "the spec's `params` differ from training" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    mlp = create_model("mlp", in_features=4, hidden_sizes=[8], out_features=2)
    state = mlp.state_dict()
    state["layers.9.weight"] = state.pop("layers.3.weight")
    torch.save(state, tmp_path / "mlp.pt")
    spec = load_spec(write_spec(tmp_path, {
        "name": "m", "version": "1", "arch": "mlp", "weights": "mlp.pt",
        "params": {"in_features": 4, "hidden_sizes": [8], "out_features": 2},
        "input": {"shape": [4]}}))
    with pytest.raises(WeightsError) as err:
        build_model(spec, spec.weights_path(), device=CPU)
    assert "missing from the checkpoint (1):\n    layers.3.weight" in str(err.value)
    assert "unexpected in the checkpoint (1):\n    layers.9.weight" in str(err.value)


def test_pickled_whole_model_is_refused_without_running_it(tmp_path, digits_model):
    torch.save(digits_model, tmp_path / "whole.pt")
    with pytest.raises(WeightsError) as err:
        read_checkpoint(tmp_path / "whole.pt")
    assert "refused without running it" in str(err.value)
    assert "torch.save(model.state_dict(), path)" in str(err.value)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")


def test_no_state_dict_inside(tmp_path):
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, tmp_path / "meta.pt")
    with pytest.raises(WeightsError, match=r"holds no state_dict \(found: config, epoch\)"):
        read_checkpoint(tmp_path / "meta.pt")


@pytest.mark.parametrize("requested,gpu_id,cuda,expected", [
    ("auto", 0, True, "cuda:0"),
    ("auto", 3, True, "cuda:3"),
    ("auto", "1", True, "cuda:1"),
    ("auto", None, True, "cpu"),  # TorchServe assigned no GPU
    ("auto", 0, False, "cpu"),  # CPU-only torch
    ("cpu", 0, True, "cpu"),
    ("gpu", 2, True, "cuda:2"),
])
def test_select_device(requested, gpu_id, cuda, expected):
    assert select_device(requested, gpu_id, cuda_available=cuda) == torch.device(expected)


@pytest.mark.parametrize("gpu_id,cuda,reason", [
    (0, False, "torch.cuda.is_available() is False"),
    (None, True, "TorchServe assigned no GPU"),
])
def test_gpu_required_but_unavailable(gpu_id, cuda, reason):
    with pytest.raises(RuntimeError) as err:
        select_device("gpu", gpu_id, cuda_available=cuda)
    assert reason in str(err.value) and "set serving.device to auto or cpu" in str(err.value)
    assert "CUDA" not in str(err.value)  # TorchServe would misreport it as out of memory


def test_bf16_precision_casts_model_and_inputs(tmp_path, digits_model):
    torch.save(digits_model.state_dict(), tmp_path / "digits.pt")
    data = digits_spec_data(weights="digits.pt")
    data["serving"]["precision"] = "bf16"
    spec = load_spec(write_spec(tmp_path, data))
    model = build_model(spec, spec.weights_path(), device=CPU).model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert input_dtype(spec) == torch.bfloat16
    batch = golden_inputs(spec)[0]["input"][:2]
    with torch.inference_mode():
        reference = digits_model(batch.float())
        assert torch.allclose(model(batch).float(), reference, atol=0.1, rtol=0.05)
