"""Checkpoints as public projects save them: each builds with at most one spec line, and without
that line is refused with a message naming it (tests/public_checkpoints.py has the layouts)."""

import pytest
import torch

from handlers.construction import build_model
from handlers.errors import WeightsError
from handlers.spec import load_spec
from tests.helpers import digits_spec_data, write_spec
from tests.public_checkpoints import LAYOUTS

CPU = torch.device("cpu")


def _spec(folder, filename, checkpoint=None):
    data = digits_spec_data(weights=filename, **({"checkpoint": checkpoint} if checkpoint else {}))
    return load_spec(write_spec(folder, data))


def _outputs(model):
    with torch.inference_mode():
        return model(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_loads_with_at_most_one_spec_line(tmp_path, digits_model, name):
    layout = LAYOUTS[name]
    layout.write(digits_model, tmp_path / layout.filename)
    assert len(layout.spec_line) <= 1
    loaded = build_model(_spec(tmp_path, layout.filename, layout.spec_line),
                         tmp_path / layout.filename, device=CPU)
    assert torch.equal(_outputs(loaded.model), _outputs(digits_model))


@pytest.mark.parametrize("name", [n for n, layout in LAYOUTS.items() if layout.refusal])
def test_without_its_line_the_refusal_names_the_line(tmp_path, digits_model, name):
    layout = LAYOUTS[name]
    layout.write(digits_model, tmp_path / layout.filename)
    with pytest.raises(WeightsError) as err:
        build_model(_spec(tmp_path, layout.filename), tmp_path / layout.filename, device=CPU)
    assert layout.refusal in str(err.value), str(err.value)


def test_what_was_done_is_said(tmp_path, digits_model):
    notes = {}
    for name in ("resemblyzer", "lightning", "torchvision_references", "huggingface_bin",
                 "huggingface_safetensors_with_head"):
        layout = LAYOUTS[name]
        layout.write(digits_model, tmp_path / layout.filename)
        notes[name] = build_model(_spec(tmp_path, layout.filename, layout.spec_line),
                                  tmp_path / layout.filename, device=CPU).checkpoint_notes
    assert notes["resemblyzer"][0] == ("took the state_dict under `model_state`, the only mapping "
                                       "of tensors in the file (checkpoint.key chooses another) "
                                       "(ignored: optimizer_state, step)")
    assert notes["lightning"][-1] == ("stripped prefix `model.` from 8 keys: each was `model.` + "
                                      "a key the model needs and lacked")
    assert notes["torchvision_references"][1:] == [
        "dropped `n_averaged` (AveragedModel's counter)", "stripped prefix `module.` from 8 keys"]
    assert notes["huggingface_bin"][-1].startswith("stripped prefix `digits.` from 8 keys")
    assert notes["huggingface_safetensors_with_head"][-1] == (
        "stripped prefix `digits.` from 8 keys (checkpoint.strip_prefix); dropped 2 keys outside "
        "it: score.bias, score.weight")


def test_dino_names_every_candidate(tmp_path, digits_model):
    layout = LAYOUTS["dino"]
    layout.write(digits_model, tmp_path / layout.filename)
    with pytest.raises(WeightsError) as err:
        build_model(_spec(tmp_path, layout.filename), tmp_path / layout.filename, device=CPU)
    assert "holds 3 state_dicts: `dino_loss` (1 tensors), `student` (8 tensors), `teacher` " \
           "(8 tensors)" in str(err.value)
    student = build_model(_spec(tmp_path, layout.filename, {"key": "student"}),
                          tmp_path / layout.filename, device=CPU)  # DDP's module. stripped
    assert not torch.equal(_outputs(student.model), _outputs(digits_model))  # the noisy one


def test_key_paths_that_lead_nowhere_are_named(tmp_path, digits_model):
    torch.save({"wrapper": {"inner": digits_model.state_dict()}, "epoch": 1}, tmp_path / "c.pt")
    nested = build_model(_spec(tmp_path, "c.pt", {"key": "wrapper.inner"}), tmp_path / "c.pt",
                         device=CPU)
    assert torch.equal(_outputs(nested.model), _outputs(digits_model))
    with pytest.raises(WeightsError, match=r"has no `outer` under `wrapper` \(found: inner\)"):
        build_model(_spec(tmp_path, "c.pt", {"key": "wrapper.outer"}), tmp_path / "c.pt",
                    device=CPU)
    with pytest.raises(WeightsError, match="`checkpoint.key: epoch` leads to int"):
        build_model(_spec(tmp_path, "c.pt", {"key": "epoch"}), tmp_path / "c.pt", device=CPU)


def test_a_backbone_checkpoint_gets_the_models_prefix(tmp_path):
    """The reverse of strip: the checkpoint holds `features.*`, the model holds `backbone.features.*`."""
    from torch import nn

    from model_defs import create_model
    from model_defs.registry import _REGISTRY, register_model

    @register_model("test_only_backbone_wrapper")
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = create_model("mlp", in_features=4, hidden_sizes=[8], out_features=3)

        def forward(self, x):
            return self.backbone(x)

    try:
        torch.manual_seed(0)
        backbone = create_model("mlp", in_features=4, hidden_sizes=[8], out_features=3)
        torch.save(backbone.state_dict(), tmp_path / "backbone.pt")
        spec = load_spec(write_spec(tmp_path, {"name": "w", "version": "1", "weights": "backbone.pt",
                                               "arch": "test_only_backbone_wrapper",
                                               "input": {"shape": [4]}}))
        loaded = build_model(spec, tmp_path / "backbone.pt", device=CPU)
        assert loaded.checkpoint_notes[-1].startswith("added prefix `backbone.` to 4 keys")
        batch = torch.rand(2, 4)
        assert torch.equal(loaded.model(batch), backbone(batch))
    finally:
        del _REGISTRY["test_only_backbone_wrapper"]


def test_an_inexact_prefix_is_never_applied_silently(tmp_path, digits_model):
    state = {f"model.{k}": v for k, v in digits_model.state_dict().items()}
    del state["model.classifier.4.bias"]  # so the model would still lack a key after stripping
    state["criterion.weight"] = torch.ones(1)
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(WeightsError) as err:
        build_model(_spec(tmp_path, "c.pt"), tmp_path / "c.pt", device=CPU)
    message = str(err.value)
    assert "7 of the unexpected keys are `model.` + a missing key" in message
    assert 'Add `checkpoint: {strip_prefix: "model."}`' in message
    assert "1 model keys would still be missing" in message
