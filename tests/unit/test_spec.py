"""Spec validation: good specs load; every bad one fails naming the file, the key and the fix."""

import pytest

from handlers.errors import SpecError
from handlers.spec import load_spec
from tests.helpers import DIGITS_SPEC, REPO_ROOT, digits_spec_data, write_spec


def test_bundled_spec_loads():
    spec = load_spec(DIGITS_SPEC)
    assert (spec.name, spec.arch, spec.input.shape) == ("digits_cnn", "digits_cnn", (1, 8, 8))
    assert spec.serving.batch_size == 16 and spec.labels[3] == "3"


def _error_for(tmp_path, data) -> str:
    path = write_spec(tmp_path, data)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message  # every message names the file
    return message


def test_missing_key_is_named(tmp_path):
    data = digits_spec_data()
    del data["arch"]
    assert "missing key `arch`: add it" in _error_for(tmp_path, data)


def test_unknown_key_is_named_with_allowed_keys(tmp_path):
    message = _error_for(tmp_path, digits_spec_data(wieghts="x.pt"))
    assert "unknown key `wieghts`: remove it or fix its spelling" in message
    assert "allowed: name, version, arch, weights, params" in message


def test_unknown_serving_key_is_named(tmp_path):
    data = digits_spec_data()
    data["serving"]["batchsize"] = 4
    assert "unknown key `serving.batchsize`" in _error_for(tmp_path, data)


def test_every_problem_is_reported_at_once(tmp_path):
    data = digits_spec_data(input={"shape": [1, 8, 8], "dtype": "float8"})
    data["serving"]["device"] = "tpu"
    data["serving"]["precision"] = "int4"
    message = _error_for(tmp_path, data)
    assert "`input.dtype` 'float8' is not one of float32" in message
    assert "`serving.device` 'tpu' is not one of auto, cpu, gpu" in message
    assert "`serving.precision` 'int4' is not one of fp32, fp16, bf16" in message


@pytest.mark.parametrize("shape", [[], [1, 0, 8], "1x8x8", [1.5]])
def test_bad_input_shape(tmp_path, shape):
    message = _error_for(tmp_path, digits_spec_data(input={"shape": shape}))
    assert "`input.shape`" in message and "positive integers" in message


def test_min_workers_above_max(tmp_path):
    data = digits_spec_data()
    data["serving"].update(min_workers=3, max_workers=2)
    assert "`serving.min_workers` (3) exceeds `serving.max_workers` (2)" in _error_for(tmp_path, data)


def test_bad_batch_size(tmp_path):
    data = digits_spec_data()
    data["serving"]["batch_size"] = 0
    assert "`serving.batch_size` 0 must be an integer >= 1" in _error_for(tmp_path, data)


def test_name_must_suit_torchserve(tmp_path):
    assert "`name` 'my model'" in _error_for(tmp_path, digits_spec_data(name="my model"))


def test_not_a_mapping(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="a spec is a YAML mapping"):
        load_spec(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_weights_resolve_relative_to_spec_then_repo(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"x")
    assert load_spec(write_spec(tmp_path, digits_spec_data(weights="w.pt"))).weights_path(
        REPO_ROOT) == (tmp_path / "w.pt").resolve()
    spec = load_spec(write_spec(tmp_path, digits_spec_data(weights="pyproject.toml")))
    assert spec.weights_path(REPO_ROOT) == REPO_ROOT / "pyproject.toml"


def test_missing_weights_name_every_place_tried(tmp_path):
    spec = load_spec(write_spec(tmp_path, digits_spec_data(weights="gone.pt")))
    with pytest.raises(SpecError) as err:
        spec.weights_path(REPO_ROOT)
    assert str(tmp_path / "gone.pt") in str(err.value) and str(REPO_ROOT / "gone.pt") in str(err.value)
    assert "pass --weights PATH" in str(err.value)
