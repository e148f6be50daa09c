"""Checkpoint intake: every common training layout in, nothing unsafe through, a readable report."""

import builtins

import pytest
import torch
from safetensors.torch import save_file, save_model

from handlers.checkpoint import read_checkpoint
from handlers.spec import CheckpointSpec
from handlers.construction import build_model
from handlers.errors import WeightsError
from handlers.spec import load_spec
from model_defs import create_model
from tests.helpers import write_spec

CPU = torch.device("cpu")
MLP_PARAMS = {"in_features": 4, "hidden_sizes": [8], "out_features": 3}


def mlp_spec(folder, weights: str, params=None, **checkpoint):
    data = {"name": "m", "version": "1", "arch": "mlp", "weights": weights,
            "params": params or MLP_PARAMS, "input": {"shape": [4]}}
    if checkpoint:
        data["checkpoint"] = checkpoint
    return load_spec(write_spec(folder, data))


def outputs(model, batch=None):
    batch = torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) if batch is None else batch
    with torch.inference_mode():
        return model(batch)


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return create_model("mlp", **MLP_PARAMS).eval()


@pytest.mark.parametrize("key", ["state_dict_ema", "model_ema"])
def test_ema_weights_are_chosen_by_the_spec(tmp_path, mlp, key):
    ema = create_model("mlp", **MLP_PARAMS).eval()
    torch.save({"state_dict": mlp.state_dict(), key: ema.state_dict(), "epoch": 9}, tmp_path / "c.pt")
    raw = build_model(mlp_spec(tmp_path, "c.pt"), tmp_path / "c.pt", device=CPU)
    with_ema = build_model(mlp_spec(tmp_path, "c.pt", use_ema=True), tmp_path / "c.pt", device=CPU)
    assert torch.equal(outputs(raw.model), outputs(mlp))
    assert torch.equal(outputs(with_ema.model), outputs(ema))
    assert with_ema.checkpoint_notes == [f"took the state_dict under `{key}` (ignored: epoch, state_dict)"]


def test_missing_ema_names_what_the_file_holds(tmp_path, mlp):
    torch.save({"state_dict": mlp.state_dict(), "epoch": 1}, tmp_path / "c.pt")
    with pytest.raises(WeightsError, match=r"holds no EMA weights \(found: epoch, state_dict\)"):
        read_checkpoint(tmp_path / "c.pt", CheckpointSpec(use_ema=True))


def test_safetensors_file(tmp_path, mlp):
    save_file(mlp.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = build_model(mlp_spec(tmp_path, "w.safetensors"), tmp_path / "w.safetensors", device=CPU)
    assert torch.equal(outputs(loaded.model), outputs(mlp))


def test_notes_say_what_was_normalised(tmp_path, mlp):
    wrapped = {"model_state_dict": {f"module._orig_mod.{k}": v for k, v in mlp.state_dict().items()},
               "optimizer": {}, "epoch": 3}
    torch.save(wrapped, tmp_path / "c.pt")
    notes = read_checkpoint(tmp_path / "c.pt").notes
    assert notes == ["took the state_dict under `model_state_dict` (ignored: epoch, optimizer)",
                     "stripped prefix `module.` from 4 keys", "stripped prefix `_orig_mod.` from 4 keys"]


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return builtins.open, (str(marker), "w")

    torch.save({"weight": torch.zeros(2), "extra": Payload()}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(WeightsError) as err:
        read_checkpoint(tmp_path / "evil.pt")
    assert "refused without running it" in str(err.value)
    assert "mar convert-legacy" in str(err.value)
    assert not marker.exists()  # the payload never ran


def test_long_runs_of_numbered_layers_are_folded(tmp_path):
    deep = create_model("mlp", in_features=4, hidden_sizes=[8] * 10, out_features=3)
    torch.save(deep.state_dict(), tmp_path / "deep.pt")
    with pytest.raises(WeightsError) as err:
        build_model(mlp_spec(tmp_path, "deep.pt"), tmp_path / "deep.pt", device=CPU)
    message = str(err.value)
    assert "unexpected in the checkpoint (18):" in message
    assert "layers.{6,9,12,15,18,21,24,27,30}.weight (9 keys)" in message
    assert "layers.12.weight\n" not in message
    assert "layers.3.weight: checkpoint [8, 8] vs model [3, 8]" in message


def test_integer_tensor_where_a_float_belongs_is_reported(tmp_path, mlp):
    state = mlp.state_dict()
    state["layers.0.bias"] = state["layers.0.bias"].long()
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(WeightsError, match=r"dtype differs \(1\):\n    layers.0.bias: checkpoint "
                                           r"torch.int64 vs model torch.float32"):
        build_model(mlp_spec(tmp_path, "c.pt"), tmp_path / "c.pt", device=CPU)


def test_half_precision_checkpoint_loads_into_fp32(tmp_path, mlp):
    torch.save({k: v.half() for k, v in mlp.state_dict().items()}, tmp_path / "c.pt")
    loaded = build_model(mlp_spec(tmp_path, "c.pt"), tmp_path / "c.pt", device=CPU)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert torch.allclose(outputs(loaded.model), outputs(mlp), atol=1e-2)


def test_partial_load_is_opt_in_and_reported(tmp_path, mlp):
    state = {k: v for k, v in mlp.state_dict().items() if not k.startswith("layers.3.")}
    state["aux_head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(WeightsError):
        build_model(mlp_spec(tmp_path, "c.pt"), tmp_path / "c.pt", device=CPU)
    spec = mlp_spec(tmp_path, "c.pt", allow_missing=["layers.3.*"], ignore_unexpected=["aux_*"])
    loaded = build_model(spec, tmp_path / "c.pt", device=CPU)
    assert loaded.plan.let_through_missing == ("layers.3.bias", "layers.3.weight")
    assert loaded.plan.ignored_unexpected == ("aux_head.weight",)
    assert torch.equal(loaded.model.layers[0].weight, mlp.layers[0].weight)
    assert torch.isfinite(outputs(loaded.model)).all()


def test_tampered_weights_are_refused_before_use(tmp_path, mlp):
    torch.save(mlp.state_dict(), tmp_path / "c.pt")
    with pytest.raises(WeightsError, match="altered after `mar build`"):
        build_model(mlp_spec(tmp_path, "c.pt"), tmp_path / "c.pt", device=CPU,
                    expected_blake3={"c.pt": "0" * 64})


@pytest.mark.parametrize("save", ["torch", "safetensors"])
def test_tied_weights_and_non_persistent_buffers_come_out_as_eager(tmp_path, save):
    torch.manual_seed(0)
    eager = create_model("tied_lm").eval()
    weights = tmp_path / ("w.pt" if save == "torch" else "w.safetensors")
    if save == "torch":
        torch.save(eager.state_dict(), weights)
    else:
        save_model(eager, str(weights))  # stores the tied tensor once
    spec = load_spec(write_spec(tmp_path, {"name": "lm", "version": "1", "arch": "tied_lm",
                                           "weights": weights.name,
                                           "input": {"shape": [8], "dtype": "int64"}}))
    loaded = build_model(spec, weights, device=CPU).model
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(loaded.positions, eager.positions) and loaded.positions.device.type == "cpu"
    assert torch.equal(loaded.scale, eager.scale)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    tokens = torch.randint(0, 32, (3, 8))
    with torch.inference_mode():
        assert torch.equal(loaded(tokens), eager(tokens))
