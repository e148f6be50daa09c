"""`mar build`: validation first, a self-contained archive, nothing written on failure."""

import json
import zipfile

import pytest
import yaml

from handlers.errors import ArchitectureError, WeightsError
from model_defs import create_model
from scripts.build import build_archive
from scripts.cli import main
from tests.helpers import REPO_ROOT, digits_spec_data, save_weights, write_spec


def test_archive_holds_exactly_what_the_handler_needs(digits_spec, tmp_path):
    result = build_archive(digits_spec, export_path=tmp_path / "store")
    with zipfile.ZipFile(result.archive) as mar:
        names = set(mar.namelist())
        spec = yaml.safe_load(mar.read("spec.yaml"))
        config = yaml.safe_load(mar.read("model-config.yaml"))
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    package = REPO_ROOT / "handlers"
    handlers = {f"handlers/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")
                if p.name != "model_handler.py"}
    assert names == {
        "MAR-INF/MANIFEST.json", "model_handler.py", "spec.yaml", "model-config.yaml", "digits.pt",
        "build-info.json", "golden.pt", "model_defs/__init__.py", "model_defs/registry.py",
        "model_defs/errors.py", "model_defs/digits_cnn.py", *handlers}
    assert {"handlers/startup.py", "handlers/records.py", "handlers/errors.py",
            "handlers/protocols/oip.py"} <= handlers
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


def test_forward_failure_is_reported_before_packaging(tmp_path, digits_model, capsys):
    save_weights(digits_model, tmp_path / "digits.pt")
    spec = write_spec(tmp_path, digits_spec_data(weights="digits.pt", input={"shape": [3, 8, 8]}))
    assert main(["build", str(spec), "--export-path", str(tmp_path / "store")]) == 1
    stderr = capsys.readouterr().err
    assert "forward pass on inputs input [16, 3, 8, 8] (float32) failed" in stderr
    assert "Check the inputs' `shape`" in stderr
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_constructor_errors_name_the_params(tmp_path):
    mlp = create_model("mlp")
    save_weights(mlp, tmp_path / "w.pt")
    spec = write_spec(tmp_path, {"name": "m", "version": "1", "arch": "mlp", "weights": "w.pt",
                                 "params": {"activation": "swish"}, "input": {"shape": [16]}})
    with pytest.raises(ArchitectureError) as err:
        build_archive(spec, export_path=tmp_path / "store")
    assert "building 'mlp' with params {'activation': 'swish'} failed: ValueError: activation " \
           "'swish' is not one of relu, gelu, tanh. Fix `params` in the spec." in str(err.value)


def test_cli_builds_several_specs_and_weights_override(tmp_path, digits_model, capsys):
    save_weights(digits_model, tmp_path / "other.pt")
    one = write_spec(tmp_path, digits_spec_data(name="one", weights="missing.pt"), "one.yaml")
    assert main(["build", str(one), "--weights", str(tmp_path / "other.pt"),
                 "--export-path", str(tmp_path)]) == 0
    assert "built" in capsys.readouterr().out and (tmp_path / "one-1.0.mar").is_file()
    two = write_spec(tmp_path, digits_spec_data(name="two", weights="other.pt"), "two.yaml")
    three = write_spec(tmp_path, digits_spec_data(name="three", weights="other.pt"), "three.yaml")
    assert main(["build", str(two), str(three), "--export-path", str(tmp_path)]) == 0
    assert (tmp_path / "two-1.0.mar").is_file() and (tmp_path / "three-1.0.mar").is_file()


def test_cli_reports_user_errors_in_one_paragraph(tmp_path, digits_model, capsys):
    spec = write_spec(tmp_path, digits_spec_data(arch="vgg", weights="w.pt"))
    save_weights(digits_model, tmp_path / "w.pt")
    assert main(["build", str(spec), "--export-path", str(tmp_path)]) == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith("mar build: error: unknown architecture 'vgg'; registered: ")
    assert "Traceback" not in stderr


def test_cli_lets_a_bug_show_its_traceback(monkeypatch, digits_spec, tmp_path):
    """Only MarError is a user's error; anything else is a bug and must not be disguised."""
    def broken(*args, **kwargs):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr("scripts.build.build_archive", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["build", str(digits_spec), "--export-path", str(tmp_path)])


@pytest.mark.parametrize("command", ["build", "verify", "serve", "register", "scale", "promote",
                                     "unregister", "models", "predict", "export-kserve", "bench"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0 and f"usage: mar {command}" in capsys.readouterr().out
