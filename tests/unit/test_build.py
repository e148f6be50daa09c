"""`mar build`: validation first, a self-contained archive, nothing written on failure."""

import json
import zipfile

import pytest
import yaml

from handlers.loading import WeightsError
from scripts.build import build_archive
from tests.conftest import digits_spec_data, run_mar, save_weights, write_spec
from model_defs import create_model


def test_archive_holds_exactly_what_the_handler_needs(digits_spec, tmp_path):
    result = build_archive(digits_spec, export_path=tmp_path / "store")
    with zipfile.ZipFile(result.archive) as mar:
        names = set(mar.namelist())
        spec = yaml.safe_load(mar.read("spec.yaml"))
        config = yaml.safe_load(mar.read("model-config.yaml"))
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert names == {
        "MAR-INF/MANIFEST.json", "model_handler.py", "spec.yaml", "model-config.yaml", "digits.pt",
        "build-info.json", "golden.pt", "handlers/integrity.py",
        "handlers/__init__.py", "handlers/spec.py", "handlers/loading.py", "handlers/protocols.py",
        "model_defs/__init__.py", "model_defs/registry.py", "model_defs/digits_cnn.py",
    }
    assert spec["weights"] == "digits.pt" and spec["arch"] == "digits_cnn"
    assert config == {"minWorkers": 1, "maxWorkers": 1, "batchSize": 16, "maxBatchDelay": 5,
                      "responseTimeout": 120, "startupTimeout": 120}
    assert manifest["model"]["modelName"] == "digits_cnn"
    assert manifest["model"]["handler"] == "model_handler.py"
    assert manifest["model"]["configFile"] == "model-config.yaml"


def test_device_setting_becomes_device_type(tmp_path, digits_model):
    save_weights(digits_model, tmp_path / "digits.pt")
    data = digits_spec_data(weights="digits.pt")
    data["serving"].update(device="gpu", min_workers=2, max_workers=4, batch_size=32)
    result = build_archive(write_spec(tmp_path, data), export_path=tmp_path / "store")
    with zipfile.ZipFile(result.archive) as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert config["deviceType"] == "gpu"
    assert (config["minWorkers"], config["maxWorkers"], config["batchSize"]) == (2, 4, 32)


def test_failed_validation_writes_nothing_and_keeps_the_old_archive(tmp_path, digits_spec):
    store = tmp_path / "store"
    first = build_archive(digits_spec, export_path=store).archive
    before = first.read_bytes()
    wrong = create_model("digits_cnn", channels=4)
    save_weights(wrong, digits_spec.parent / "digits.pt")
    with pytest.raises(WeightsError, match="shape differs"):
        build_archive(digits_spec, export_path=store)
    assert sorted(p.name for p in store.iterdir()) == ["digits_cnn-1.0.mar"]
    assert first.read_bytes() == before


def test_forward_failure_is_reported_before_packaging(tmp_path, digits_model):
    save_weights(digits_model, tmp_path / "digits.pt")
    spec = write_spec(tmp_path, digits_spec_data(weights="digits.pt", input={"shape": [3, 8, 8]}))
    result = run_mar("build", spec, "--export-path", tmp_path / "store", check=False)
    assert result.returncode == 1
    assert "forward pass on an input of shape [16, 3, 8, 8] (float32) failed" in result.stderr
    assert "Check `input.shape`" in result.stderr
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_cli_builds_several_specs_and_weights_override(tmp_path, digits_model):
    save_weights(digits_model, tmp_path / "other.pt")
    one = write_spec(tmp_path, digits_spec_data(name="one", weights="missing.pt"), "one.yaml")
    result = run_mar("build", one, "--weights", tmp_path / "other.pt", "--export-path", tmp_path)
    assert "built" in result.stdout and (tmp_path / "one-1.0.mar").is_file()
    two = write_spec(tmp_path, digits_spec_data(name="two", weights="other.pt"), "two.yaml")
    three = write_spec(tmp_path, digits_spec_data(name="three", weights="other.pt"), "three.yaml")
    run_mar("build", two, three, "--export-path", tmp_path)
    assert (tmp_path / "two-1.0.mar").is_file() and (tmp_path / "three-1.0.mar").is_file()


def test_cli_reports_spec_errors_in_one_paragraph(tmp_path, digits_model):
    spec = write_spec(tmp_path, digits_spec_data(arch="resnet", weights="w.pt"))
    save_weights(digits_model, tmp_path / "w.pt")
    result = run_mar("build", spec, "--export-path", tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("mar build: error: unknown architecture 'resnet'; registered: ")
    assert "Traceback" not in result.stderr


def test_every_subcommand_has_help():
    for command in ("build", "serve", "register", "unregister", "models", "predict"):
        assert "usage: mar " + command in run_mar(command, "--help").stdout
