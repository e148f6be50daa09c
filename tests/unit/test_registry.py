"""Every registered architecture builds, runs and survives a state_dict round trip."""

import io

import pytest
import torch

from handlers.errors import ArchitectureError
from model_defs import create_model, definition_files, get_entry, list_models
from model_defs.registry import _package_imports


def example_batch(name: str, size: int) -> torch.Tensor:
    entry = get_entry(name)
    dtype = getattr(torch, entry.example_input_dtype)
    if dtype.is_floating_point:
        return torch.rand(size, *entry.example_input_shape, dtype=dtype)
    return torch.randint(0, 2, (size, *entry.example_input_shape), dtype=dtype)


@pytest.mark.parametrize("name", list_models())
def test_forward_pass(name):
    model = create_model(name).eval()
    batch = example_batch(name, 3)
    with torch.inference_mode():
        output = model(batch)
    assert output.shape[0] == 3
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("name", list_models())
def test_state_dict_round_trip_gives_identical_outputs(name):
    torch.manual_seed(1)
    original = create_model(name).eval()
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(2)  # a different random init, overwritten by the load
    restored = create_model(name).eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    batch = example_batch(name, 4)
    with torch.inference_mode():
        assert torch.equal(original(batch), restored(batch))


def test_at_least_the_two_bundled_architectures():
    assert {"digits_cnn", "mlp"} <= set(list_models())


def test_unknown_name_lists_known_names():
    with pytest.raises(ArchitectureError) as err:
        create_model("resnet9000")
    assert "'resnet9000'" in str(err.value)
    for name in list_models():
        assert name in str(err.value)


def test_bad_params_name_the_accepted_arguments():
    with pytest.raises(ArchitectureError, match="accepts: in_features, hidden_sizes, out_features"):
        create_model("mlp", widht=3)


def test_params_reach_the_constructor():
    model = create_model("mlp", in_features=5, hidden_sizes=[7], out_features=2)
    assert model(torch.rand(1, 5)).shape == (1, 2)
    assert [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [7, 2]


def test_definition_files_are_only_what_the_architecture_needs():
    names = sorted(path.name for path in definition_files("digits_cnn"))
    assert names == ["__init__.py", "digits_cnn.py", "registry.py"]


def test_package_imports_follow_absolute_and_relative_imports(tmp_path):
    (tmp_path / "layers.py").write_text("X = 1\n")
    (tmp_path / "blocks.py").write_text("Y = 2\n")
    (tmp_path / "unrelated.py").write_text("Z = 3\n")
    arch = tmp_path / "arch.py"
    arch.write_text("from model_defs.layers import X\nfrom . import blocks\nimport torch\n")
    found = sorted(p.name for p in _package_imports(arch, tmp_path))
    assert found == ["blocks.py", "layers.py"]
