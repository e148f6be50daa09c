"""`mar verify` in its fresh process, from the archive alone; `mar convert-legacy` end to end."""

import hashlib
import json

import torch

from tests.helpers import digits_spec_data, run_mar, tamper_weights, write_spec


def _build(spec, store, *extra):
    return run_mar("build", spec, "--export-path", store, *extra)


def test_verify_passes_on_a_fresh_build(digits_spec, tmp_path):
    _build(digits_spec, tmp_path)
    result = run_mar("verify", tmp_path / "digits_cnn-1.0.mar")
    assert "verify: OK: digits_cnn 1.0: build record matches; golden max abs error" in result.stdout


def test_tampered_weights_fail_verification(digits_spec, tmp_path):
    _build(digits_spec, tmp_path)
    tampered = tamper_weights(tmp_path / "digits_cnn-1.0.mar", tmp_path / "tampered.mar", "digits.pt")
    result = run_mar("verify", tampered, check=False)
    assert result.returncode == 1
    assert "verify: FAILED" in result.stderr and "altered after `mar build`" in result.stderr


def test_altered_definition_fails_verification(digits_spec, tmp_path):
    _build(digits_spec, tmp_path, "--format", "folder")
    definition = tmp_path / "digits_cnn-1.0" / "model_defs" / "digits_cnn.py"
    definition.write_text(definition.read_text().replace("nn.ReLU()", "nn.GELU()", 1))
    result = run_mar("verify", tmp_path / "digits_cnn-1.0", check=False)
    assert result.returncode == 1
    assert "model_defs/digits_cnn.py differ from the archive's build record" in result.stderr


def test_golden_mismatch_fails_verification(digits_spec, tmp_path):
    _build(digits_spec, tmp_path, "--format", "folder")
    folder = tmp_path / "digits_cnn-1.0"
    golden = torch.load(folder / "golden.pt", weights_only=True)
    outputs = golden["cases"][0]["outputs"]
    outputs["output"] = outputs["output"] + 0.01  # as if the model now computed differently
    torch.save(golden, folder / "golden.pt")
    record = json.loads((folder / "build-info.json").read_text())
    record["files"]["golden.pt"] = hashlib.sha256((folder / "golden.pt").read_bytes()).hexdigest()
    (folder / "build-info.json").write_text(json.dumps(record))
    result = run_mar("verify", folder, check=False)
    assert result.returncode == 1
    assert "golden check failed" in result.stderr and "by up to 0.01" in result.stderr


def test_convert_legacy_needs_trust_and_writes_a_clean_checkpoint(tmp_path, digits_model):
    torch.save(digits_model, tmp_path / "legacy.pt")  # the habit this project exists to end
    out = tmp_path / "clean.safetensors"
    refused = run_mar("convert-legacy", tmp_path / "legacy.pt", "--arch", "digits_cnn",
                      "--out", out, check=False)
    assert refused.returncode == 1 and "pass --trust-this-file" in refused.stderr
    assert not out.exists()
    wrong = run_mar("convert-legacy", tmp_path / "legacy.pt", "--arch", "digits_cnn", "--params",
                    '{"channels": 8}', "--out", out, "--trust-this-file", check=False)
    assert wrong.returncode == 1 and "do not load strictly into 'digits_cnn'" in wrong.stderr
    done = run_mar("convert-legacy", tmp_path / "legacy.pt", "--arch", "digits_cnn", "--params",
                   '{"channels": 16, "hidden": 64}', "--out", out, "--trust-this-file")
    assert "8 tensors that load strictly into 'digits_cnn'" in done.stdout
    spec = write_spec(tmp_path, digits_spec_data(weights=out.name))
    _build(spec, tmp_path / "store")
    run_mar("verify", tmp_path / "store" / "digits_cnn-1.0.mar")
