"""Reduced precision through a real TorchServe and `mar verify`: the trained digits CNN at static
int8 (ONNX Runtime QDQ, calibrated on training digits) and at bf16 answers the held-back digits as
fp32 does; its AOTInductor int8 artifact, which fixes its batch size, is refused at build; bf16 on
a CPU without bf16 units serves with one warning (ATEN_CPU_CAPABILITY=avx2 is how torch itself is
told to use, and report, AVX2 only; tests/integration/test_runtimes.py refuses an AOTInductor
artifact the same way)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from handlers.records import BUILD_RECORD_FILE, BuildRecord
from scripts.build import build_archive
from scripts.client import TorchServeClient, oip_outputs, oip_request
from scripts.examples.digits import load_split, train
from scripts.manage import register_archive
from tests.helpers import digits_spec_data, run_mar, save_weights, write_spec

SPLIT = load_split()


def _weights_and_calibration(folder, model, count: int) -> None:
    """digits.pt and `count` training digits in calibration/, beside a spec in `folder`."""
    save_weights(model, folder / "digits.pt")
    (folder / "calibration").mkdir()
    for i in range(count):
        np.save(folder / "calibration" / f"{i:03d}.npy", SPLIT.train_images[i])


@pytest.fixture(scope="module")
def built(tmp_path_factory, torchserve):
    folder = tmp_path_factory.mktemp("precision")
    model = train(SPLIT, digits_spec_data()["params"], epochs=8)
    _weights_and_calibration(folder, model, 64)
    archives = {}
    for name, precision, runtime in (
            ("digits_int8", {"dtype": "int8", "calibration": {"files": "calibration"}}, "onnx"),
            ("digits_bf16", "bf16", "eager")):
        data = digits_spec_data(name=name, weights="digits.pt")
        data["serving"] = {**data["serving"], "precision": precision, "runtime": runtime}
        archives[name] = build_archive(write_spec(folder, data, f"{name}.yaml"),
                                       export_path=torchserve.config.model_store).archive
    return model, archives


def test_int8_and_bf16_serve_the_held_back_digits_as_fp32_does(torchserve, built):
    model, archives = built
    client = TorchServeClient(torchserve.config)
    images = SPLIT.test_images[:96]
    with torch.inference_mode():
        fp32 = model(torch.from_numpy(images)).argmax(1).numpy()
    try:
        for name, archive in archives.items():
            register_archive(torchserve.config, archive, workers=1)
            body, headers = oip_request({"input": images}, binary=True)
            answer = client.infer_v2(name, body, json_length=int(headers["Inference-Header-Content-Length"]))
            served = oip_outputs(answer)["output"].argmax(1)
            assert (served == fp32).mean() >= 0.98, name
            assert abs((served == SPLIT.test_labels[:96]).mean()
                       - (fp32 == SPLIT.test_labels[:96]).mean()) <= 0.02, name
    finally:
        for name in archives:
            client.unregister(name, check=False)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_aoti_artifact_that_fixes_its_batch_size_is_refused(built, tmp_path, precision):
    """torch 2.13's AOTInductor compiles the digits CNN (conv -> flatten -> linear) for the
    example's batch alone; the artifact's own input check turns what would be a read past its
    buffers (a heap corrupted, the build's check hung) into the build's refusal."""
    from handlers.errors import ExportError

    model, _ = built
    _weights_and_calibration(tmp_path, model, 16)
    data = digits_spec_data(weights="digits.pt")
    chosen = {"dtype": "int8", "calibration": {"files": "calibration"}} if precision == "int8" \
        else "fp32"
    data["serving"] = {**data["serving"], "runtime": "aoti", "precision": chosen}
    fix = "onnx" if precision == "int8" else "eager"
    with pytest.raises(ExportError, match=r"fails on a batch of 1, which the spec allows: "
                                          r"RuntimeError: .*expected: 16, but got: 1\. Nothing "
                                          rf"was written\. Serve it with serving.runtime: {fix}"):
        build_archive(write_spec(tmp_path, data), export_path=tmp_path / "store")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())

    data["serving"]["runtime"] = fix  # the fix the message names
    assert build_archive(write_spec(tmp_path, data), export_path=tmp_path / "store").archive.exists()


def test_bf16_without_bf16_units_serves_and_warns_once(built):
    from handlers.precision import runs_natively

    _, archives = built
    result = run_mar("verify", archives["digits_bf16"], env={"ATEN_CPU_CAPABILITY": "avx2"})
    output = result.stdout + result.stderr
    assert output.count("bf16 is emulated on this CPU") == 1, output
    assert "verify: OK" in output and "accuracy at build: bf16 vs fp32 eager" in output
    here = run_mar("verify", archives["digits_bf16"])  # warned here only if this CPU lacks them
    assert ("emulated" in here.stdout + here.stderr) is not runs_natively("bf16")


def test_suggest_ranks_what_passes_and_its_spec_lines_build(built, tmp_path):
    """`mar build --suggest`'s answer, written into the spec as printed, builds; a candidate that
    fails its gate is listed with its figures, not suggested."""
    import yaml

    from handlers.precision import runs_natively
    from scripts.precision.suggest import sample_settings, spec_lines, suggest

    model, _ = built
    _weights_and_calibration(tmp_path, model, 32)
    data = digits_spec_data(weights="digits.pt")
    data["serving"] = {**data["serving"], "runtime": "onnx", "precision": {
        "dtype": "int8", "calibration": {"files": "calibration"}}}
    spec = write_spec(tmp_path, data)
    strict = {**data, "serving": {**data["serving"], "precision": {
        **data["serving"]["precision"], "accept": {"max_rel_error": 0.0}}}}
    tried = suggest(spec, seconds=0.3, candidates=[("eager", "fp32"), ("eager", "bf16"),
                                                   ("onnx", "int8")])
    passed = [c for c in tried if c.outcome == "ok"]
    native = {"fp32 eager"} | {label for label, precision in (("bf16 eager", "bf16"),
                                                              ("int8 onnx", "int8"))
                               if runs_natively(precision)}
    assert {c.label for c in passed} == native  # the others: "not here: this CPU has none of"
    assert all(c.outcome.startswith("not here: this CPU has none of") for c in tried
               if c.label not in native)
    assert [c.samples_per_s for c in passed] == sorted((c.samples_per_s for c in passed),
                                                       reverse=True)
    assert all(c.ms_per_batch > 0 for c in passed)
    assert "top1_agreement 1" in next(c for c in passed if c.label == "int8 onnx").gate

    best = passed[0]
    chosen = yaml.safe_load(spec_lines(best, sample_settings(data)))["serving"]
    data["serving"].update(chosen)
    archive = build_archive(write_spec(tmp_path, data), export_path=tmp_path / "store").archive
    with zipfile.ZipFile(archive) as packed:
        record = BuildRecord.from_bytes(packed.read(BUILD_RECORD_FILE), str(archive))
    assert (record.runtime or {"name": "eager"})["name"] == best.runtime
    assert (record.precision or {}).get("dtype", "fp32") == best.precision

    spec.write_text(yaml.safe_dump(strict))  # no error at all: reduced precision cannot pass
    refused = {c.label: c.outcome for c in suggest(spec, seconds=0.3, candidates=[
        ("onnx", "int8"), ("eager", "fp32")])}
    assert refused["fp32 eager"] == "ok"
    assert "fails its accuracy gate: max_rel_error" in refused["int8 onnx"]


def test_static_int8_aoti_runs_int8_kernels(tmp_path):
    """The AOTInductor artifact calls oneDNN's int8 kernels: compiled under grad mode, Inductor
    skipped freezing and the quantize/dequantize pairs ran around fp32 layers, slower than fp32."""
    from model_defs import create_model

    torch.manual_seed(0)
    save_weights(create_model("mlp", in_features=16, hidden_sizes=[64, 64], out_features=4),
                 tmp_path / "mlp.pt")
    (tmp_path / "calibration").mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        np.save(tmp_path / "calibration" / f"{i:03d}.npy", rng.standard_normal(16, np.float32))
    spec = write_spec(tmp_path, {
        "name": "mlp_int8", "version": "1.0", "arch": "mlp",
        "params": {"in_features": 16, "hidden_sizes": [64, 64], "out_features": 4},
        "weights": "mlp.pt", "input": {"shape": [16]},
        "serving": {"batch_size": 4, "runtime": "aoti", "precision": {
            "dtype": "int8", "calibration": {"files": "calibration"}}}})
    archive = build_archive(spec, export_path=tmp_path / "store", archive_format="folder").archive
    with zipfile.ZipFile(archive / "model.pt2") as package:
        wrapper = "".join(package.read(name).decode() for name in package.namelist()
                          if name.endswith(".wrapper.cpp"))
    assert "qlinear_pointwise" in wrapper
    assert "aoti_torch_cpu_addmm" not in wrapper  # no fp32 matmul left
