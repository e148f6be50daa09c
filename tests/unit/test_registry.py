"""Every registered architecture builds, runs and survives a state_dict round trip.

The forward pass needs one sample the model accepts: the registration's example input (with the
constructor's defaults), else the input and params of a spec under model_defs/specs that uses the
architecture. An architecture with neither still gets its state_dict round trip.
"""

import io
from dataclasses import dataclass

import pytest
import torch

from handlers.errors import ArchitectureError
from handlers.model_io import ModelIO
from handlers.golden_inputs import golden_inputs
from handlers.spec import load_spec
from model_defs import create_model, definition_files, get_entry, list_models
from model_defs.registry import _package_imports
from tests.helpers import REPO_ROOT

SPECS = sorted((REPO_ROOT / "model_defs" / "specs").glob("*.yaml"))


@dataclass(frozen=True)
class Example:
    params: dict
    spec: object | None  # the spec it came from; None: the registration's example input
    shape: tuple[int, ...] = ()
    dtype: str = "float32"

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        if self.spec is not None:  # the largest case: the list of samples, or the longest batch
            cases = golden_inputs(self.spec)
            case = cases[0] if self.spec.io.batching == "list" else cases[-1]
            return {k: v[:size] for k, v in case.items()}
        dtype = getattr(torch, self.dtype)
        if dtype.is_floating_point:
            return {"input": torch.rand(size, *self.shape, dtype=dtype)}
        return {"input": torch.randint(0, 2, (size, *self.shape), dtype=dtype)}

    def run(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        if self.spec is None:
            with torch.inference_mode():
                return {"output": model(batch["input"])}
        return ModelIO(self.spec, model)(batch)


def example(name: str) -> Example | None:
    entry = get_entry(name)
    if entry.example_input_shape is not None:
        return Example({}, None, entry.example_input_shape, entry.example_input_dtype)
    spec = next((s for s in map(load_spec, SPECS) if s.arch == name), None)
    return Example(spec.params, spec) if spec else None


def example_or_skip(name: str) -> Example:
    found = example(name)
    if found is None:
        pytest.skip(f"{name} has no example input: register it with example_input_shape=... or "
                    "add a spec under model_defs/specs that uses it")
    return found


def _per_sample(value) -> list[torch.Tensor]:
    """An output as one tensor per sample (a batch tensor's rows, or a per-sample list)."""
    return list(value) if isinstance(value, list) else list(value.unbind(0))


@pytest.mark.parametrize("name", list_models())
def test_forward_pass(name):
    found = example_or_skip(name)
    model = create_model(name, **found.params).eval()
    for output in found.run(model, found.batch(3)).values():
        samples = _per_sample(output)
        assert len(samples) == 3
        assert all(torch.isfinite(sample.float()).all() for sample in samples)


@pytest.mark.parametrize("name", list_models())
def test_state_dict_round_trip_gives_identical_weights_and_outputs(name):
    found = example(name)
    params = found.params if found else {}
    torch.manual_seed(1)
    original = create_model(name, **params).eval()
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(2)  # a different random init, overwritten by the load
    restored = create_model(name, **params).eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(),
                                                 restored.state_dict().values()))
    if found is not None:
        batch = found.batch(4)
        for name_, value in found.run(original, batch).items():
            again = _per_sample(found.run(restored, batch)[name_])
            assert all(torch.equal(a, b) for a, b in zip(_per_sample(value), again, strict=True))


def test_registration_needs_no_example_input():
    from torch import nn

    from model_defs.registry import _REGISTRY, register_model

    @register_model("test_only_no_example")
    class NoExample(nn.Module):
        def forward(self, x):
            return x

    try:
        assert get_entry("test_only_no_example").example_input_shape is None
        assert example("test_only_no_example") is None
        assert example("digits_cnn").spec.input.shape == (1, 8, 8)  # model_defs/specs/digits_cnn.yaml
    finally:
        del _REGISTRY["test_only_no_example"]


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
    assert names == ["__init__.py", "digits_cnn.py", "errors.py", "registry.py"]


def test_package_imports_follow_absolute_and_relative_imports(tmp_path):
    (tmp_path / "layers.py").write_text("X = 1\n")
    (tmp_path / "blocks.py").write_text("Y = 2\n")
    (tmp_path / "unrelated.py").write_text("Z = 3\n")
    arch = tmp_path / "arch.py"
    arch.write_text("from model_defs.layers import X\nfrom . import blocks\nimport torch\n")
    found = sorted(p.name for p in _package_imports(arch, tmp_path))
    assert found == ["blocks.py", "layers.py"]
