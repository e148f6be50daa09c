"""Each exported runtime end to end through a real TorchServe, tampering caught, `mar verify`."""

import json
import zipfile

import numpy as np
import pytest
import torch
import yaml

from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.manage import register_archive
from scripts.model_log import ModelLog
from tests.helpers import digits_spec_data, example_spec, run_mar, save_weights, write_spec

CASES = [("digits", "torchscript"), ("digits", "onnx"), ("sentiment", "onnx"),
         ("sentiment", "aoti")]


def _spec(folder, model_name, runtime, digits_model):
    if model_name == "digits":
        save_weights(digits_model, folder / "digits.pt")
        data = digits_spec_data(name=f"digits_{runtime}", weights="digits.pt")
        data["serving"]["runtime"] = runtime
        return write_spec(folder, data), digits_model
    spec, model = example_spec(folder, "sentiment")
    data = yaml.safe_load(spec.read_text())
    data["name"] = f"sentiment_{runtime}"
    data["serving"]["runtime"] = runtime
    spec.write_text(yaml.safe_dump(data))
    return spec, model


@pytest.mark.parametrize("model_name,runtime", CASES)
def test_runtime_serves_like_eager(torchserve, tmp_path, digits_model, model_name, runtime):
    spec, model = _spec(tmp_path, model_name, runtime, digits_model)
    archive = build_archive(spec, export_path=torchserve.config.model_store).archive
    register_archive(torchserve.config, archive, workers=1)
    client = TorchServeClient(torchserve.config)
    name = f"{model_name}_{runtime}"
    try:
        if model_name == "digits":
            images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
            body = client.predict(name, json.dumps({"inputs": images.tolist()}).encode()).json()
            with torch.inference_mode():
                assert torch.allclose(torch.tensor(body["outputs"]), model(images), atol=1e-5)
        else:
            texts = ["the movie was good", "bad", "i really liked the plot and the acting"]
            bodies = [client.predict(name, json.dumps({"inputs": {"input_ids": t}}).encode()).json()
                      for t in texts]
            for text, body in zip(texts, bodies):
                ids = torch.tensor([_ids(text)])
                with torch.inference_mode():
                    logits, states = model(ids, torch.ones_like(ids))
                assert np.allclose(body["outputs"]["logits"], logits.numpy(), atol=1e-4)
                assert np.array(body["outputs"]["token_states"]).shape == tuple(states.shape)
    finally:
        client.unregister(name, check=False)
    if runtime == "aoti":  # its code is for this CPU's units: refused where torch has fewer
        built_for = torch.backends.cpu.get_cpu_capability()
        fewer = {"AVX512": "avx2", "AVX2": "default"}[built_for]
        refused = run_mar("verify", archive, check=False, env={"ATEN_CPU_CAPABILITY": fewer})
        assert refused.returncode == 1
        assert f"was compiled by AOTInductor on a CPU with {built_for}" in refused.stderr
        assert f"this host has {fewer.upper()}" in refused.stderr
        assert "would stop on an illegal instruction" in refused.stderr


def _ids(text: str) -> list[int]:
    from tokenizers import Tokenizer

    from tests.helpers import REPO_ROOT
    return Tokenizer.from_file(str(REPO_ROOT / "model_defs" / "specs" /
                                   "sentiment_tokenizer.json")).encode(text).ids


def test_a_tampered_artifact_never_serves_and_verify_says_so(torchserve, tmp_path, digits_model):
    spec, _ = _spec(tmp_path, "digits", "onnx", digits_model)
    archive = build_archive(spec, export_path=torchserve.config.model_store).archive
    assert "verify: OK: digits_onnx 1.0" in run_mar("verify", archive).stdout
    tampered = torchserve.config.model_store / "digits_onnx_tampered.mar"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model.onnx":
                data = data[:-64] + bytes(64)  # the last initializer bytes zeroed
            dst.writestr(item, data)
    verdict = run_mar("verify", tampered, check=False)
    assert verdict.returncode == 1 and "altered after `mar build`" in verdict.stderr
    refused = torchserve.mar("register", tampered, check=False)
    assert refused.returncode == 1 and "failed offline verification" in refused.stderr
    client = TorchServeClient(torchserve.config)
    log = ModelLog(torchserve.config.model_log)
    response = client.register(tampered.name, initial_workers=1, check=False)
    client.unregister("digits_onnx", check=False)
    assert response.status == 500
    assert "altered after `mar build`" in log.wait_for_worker_error("digits_onnx", "1.0")
