"""What is served is what was built: the build record, the golden record, reproducible archives."""

import hashlib
import json
import zipfile

import pytest
import torch

from handlers.errors import IntegrityError
from handlers.records import BuildRecord, GoldenRecord
from scripts.build import build_archive
from scripts.cli import main
from tests.helpers import REPO_ROOT, digits_spec_data, write_spec


def test_same_inputs_give_byte_identical_archives(digits_spec, tmp_path, capsys):
    assert main(["build", str(digits_spec), "--export-path", str(tmp_path / "a")]) == 0
    assert main(["build", str(digits_spec), "--export-path", str(tmp_path / "b")]) == 0
    one, two = (tmp_path / d / "digits_cnn-1.0.mar" for d in "ab")
    assert one.read_bytes() == two.read_bytes()
    digest = hashlib.sha256(one.read_bytes()).hexdigest()
    assert capsys.readouterr().out.count(f"archive sha256 {digest}") == 2


def test_build_record_names_every_file_and_the_environment(digits_spec, tmp_path):
    archive = build_archive(digits_spec, export_path=tmp_path).archive
    with zipfile.ZipFile(archive) as mar:
        record = json.loads(mar.read("build-info.json"))
        weights = mar.read("digits.pt")
        spec_bytes = mar.read("spec.yaml")
    from blake3 import blake3
    assert record["format"] == BuildRecord.FORMAT
    assert record["weights"] == {"file": "digits.pt", "bytes": len(weights),
                                 "sha256": hashlib.sha256(weights).hexdigest(),
                                 "blake3": blake3(weights).hexdigest()}
    assert record["files"]["spec.yaml"] == hashlib.sha256(spec_bytes).hexdigest()
    assert "model_defs/digits_cnn.py" in record["files"]
    assert "handlers/construction.py" in record["files"]
    assert record["torch_version"] == torch.__version__
    if (REPO_ROOT / ".git").exists():
        assert len(record["source"]["git_commit"]) == 40
    else:  # a copy of the tree without git history records no commit rather than a wrong one
        assert record["source"] is None
    assert record["golden"] == {"file": "golden.pt", "precision": "fp32", "batch_size": 16}


def test_records_read_back_what_was_written(digits_spec, tmp_path):
    folder = build_archive(digits_spec, export_path=tmp_path, archive_format="folder").archive
    record = BuildRecord.read(folder)
    assert record.weights.file == "digits.pt" and record.model["arch"] == "digits_cnn"
    record.check_files(folder)
    golden = GoldenRecord.read(folder)
    ((inputs, outputs),) = golden.cases  # a fixed-shape model: one case
    assert inputs["input"].shape == (16, 1, 8, 8) and (golden.rtol, golden.atol) == (1e-4, 1e-4)
    assert golden.compare([outputs]).within
    shifted = golden.compare([{"output": outputs["output"] + 0.01}])
    assert not shifted.within and shifted.max_error == pytest.approx(0.01, rel=1e-3)
    assert golden.compare([{"output": outputs["output"][:2]}]).max_error == float("inf")


@pytest.mark.parametrize("record_file", ["build-info.json", "golden.pt"])
def test_a_newer_record_format_is_refused_by_name(digits_spec, tmp_path, record_file):
    folder = build_archive(digits_spec, export_path=tmp_path, archive_format="folder").archive
    path = folder / record_file
    if record_file == "build-info.json":
        path.write_text(json.dumps({**json.loads(path.read_text()), "format": 99}))
        read, supported = lambda: BuildRecord.read(folder), BuildRecord.FORMAT
    else:
        torch.save({**torch.load(path, weights_only=True), "format": 99}, path)
        read, supported = lambda: GoldenRecord.read(folder), GoldenRecord.FORMAT
    with pytest.raises(IntegrityError, match=f"has format 99; this handler reads format {supported} "
                                             "or older"):
        read()


def test_altered_file_is_named(digits_spec, tmp_path):
    folder = build_archive(digits_spec, export_path=tmp_path, archive_format="folder").archive
    definition = folder / "model_defs" / "digits_cnn.py"
    definition.write_text(definition.read_text().replace("nn.ReLU()", "nn.GELU()", 1))
    with pytest.raises(IntegrityError, match="model_defs/digits_cnn.py differ from the archive's "
                                             "build record"):
        BuildRecord.read(folder).check_files(folder)


def test_build_prints_what_it_normalised(tmp_path, digits_model, capsys):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in digits_model.state_dict().items()},
               "epoch": 7}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    spec = write_spec(tmp_path, digits_spec_data(weights="ckpt.pt"))
    assert main(["build", str(spec), "--export-path", str(tmp_path / "store")]) == 0
    printed = capsys.readouterr().out
    assert "normalised: took the state_dict under `state_dict` (ignored: epoch)" in printed
    assert "normalised: stripped prefix `module.` from 8 keys" in printed


def test_a_golden_record_of_format_1_still_reads(digits_spec, tmp_path):
    """Archives built before named inputs held one tensor in, one out."""
    folder = build_archive(digits_spec, export_path=tmp_path, archive_format="folder").archive
    ((inputs, outputs),) = GoldenRecord.read(folder).cases
    torch.save({"inputs": inputs["input"], "outputs": outputs["output"], "rtol": 1e-4,
                "atol": 1e-4}, folder / "golden.pt")
    old = GoldenRecord.read(folder)
    assert old.cases[0][0]["input"].shape == (16, 1, 8, 8)
    assert old.compare([outputs]).within
