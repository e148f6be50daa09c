"""One owner per artifact and per external format: the archive reader, the serving section's
TorchServe forms, the worker's report line and the model log."""

import pytest

from handlers.errors import MarError, SpecError
from handlers.spec import ServingSpec, load_spec
from handlers.worker_report import WorkerReport
from scripts.archive import open_archive
from scripts.build import build_archive
from scripts.model_log import ModelLog


@pytest.mark.parametrize("archive_format", ["mar", "folder"])
def test_one_reader_for_both_archive_formats(digits_spec, tmp_path, archive_format):
    built = build_archive(digits_spec, export_path=tmp_path, archive_format=archive_format)
    archive = open_archive(built.archive)
    assert (archive.name, archive.version, archive.spec.arch) == ("digits_cnn", "1.0", "digits_cnn")
    assert archive.read("spec.yaml").startswith(b"name: digits_cnn")
    with archive.extracted() as folder:
        assert (folder / "model_handler.py").is_file() and (folder / "golden.pt").is_file()
    with pytest.raises(MarError, match="has no nothing.txt: it was not built by `mar build`"):
        archive.read("nothing.txt")


def test_not_an_archive_is_named(tmp_path):
    with pytest.raises(MarError, match="no archive at"):
        open_archive(tmp_path / "missing.mar")
    (tmp_path / "junk.mar").write_bytes(b"junk")
    with pytest.raises(MarError, match="is not a model archive"):
        open_archive(tmp_path / "junk.mar")


def test_serving_settings_in_torchserves_forms(digits_spec):
    serving = load_spec(digits_spec).serving
    assert serving.model_config() == {"minWorkers": 1, "maxWorkers": 1, "batchSize": 16,
                                      "maxBatchDelay": 5, "responseTimeout": 120,
                                      "startupTimeout": 120}
    assert serving.snapshot_entry("digits_cnn-1.0.mar", default=True) == {
        "defaultVersion": True, "marName": "digits_cnn-1.0.mar", "minWorkers": 1,
        "maxWorkers": 1, "batchSize": 16, "maxBatchDelay": 5, "responseTimeout": 120}
    assert serving.register_params() == {"initial_workers": 1, "batch_size": 16,
                                         "max_batch_delay": 5}
    gpu = ServingSpec(device="gpu", device_ids=(0, 2), min_workers=0)
    assert gpu.model_config()["deviceType"] == "gpu" and gpu.model_config()["deviceIds"] == [0, 2]
    assert gpu.register_params(initial_workers=3)["initial_workers"] == 3
    assert gpu.register_params()["initial_workers"] == 1  # never register with no worker


def test_overrides_follow_the_spec_rules(digits_spec):
    serving = load_spec(digits_spec).serving
    assert serving.overridden(max_workers=3, batch_size=None).max_workers == 3
    with pytest.raises(SpecError, match=r"min workers \(2\) exceeds max workers \(--max-workers\) "
                                        r"\(1\); raise max workers"):
        serving.overridden(min_workers=2)


def test_worker_report_round_trips_through_a_model_log(tmp_path):
    ready = WorkerReport(event="ready", model="digits_cnn", version="1.0", device="cpu",
                         precision="fp32", golden_max_error=1e-8, load_seconds=0.2,
                         resident_growth_bytes=2 << 20, weights_bytes=1 << 20)
    failed = WorkerReport(event="failed", model="digits_cnn", version="2.0",
                          error="IntegrityError: altered\nafter build")
    log = tmp_path / "model_log.log"
    prefix = "2026-11-29T22:00:00,123 [INFO ] W-9000-digits_cnn_{}-stdout MODEL_LOG - "
    log.write_text("\n".join([prefix.format("1.0") + ready.log_line(),
                              prefix.format("2.0") + "Traceback (most recent call last):",
                              prefix.format("2.0") + '  File "x.py", line 1, in <module>',
                              prefix.format("2.0") + "IntegrityError: altered",
                              prefix.format("2.0") + failed.log_line()]) + "\n")
    assert ModelLog(log, offset=0).worker_reports() == [ready, failed]
    assert ready.memory_over_weights == 2.0
    error = ModelLog(log, offset=0).wait_for_worker_error("digits_cnn", "2.0", timeout_s=5)
    assert error == ('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
                     "IntegrityError: altered")
    assert ModelLog(log).worker_reports() == []  # only what is written after it was opened
