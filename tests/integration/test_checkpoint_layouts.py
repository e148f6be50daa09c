"""Every accepted checkpoint layout, served by a real TorchServe, answers like the clean state_dict;
a tampered archive never serves."""

import json

import pytest
import torch
from safetensors.torch import save_file

from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.manage import register_archive
from scripts.model_log import ModelLog
from tests.helpers import digits_spec_data, tamper_weights, write_spec
from tests.public_checkpoints import LAYOUTS as PUBLIC_LAYOUTS

LAYOUTS = {
    "plain": (lambda sd: sd, {}),
    "state_dict": (lambda sd: {"state_dict": sd, "optimizer": {"lr": 0.1}, "epoch": 3}, {}),
    "model_state_dict": (lambda sd: {"model_state_dict": sd, "scheduler": {}}, {}),
    "model": (lambda sd: {"model": sd, "config": {"depth": 2}}, {}),
    "module": (lambda sd: {"module": sd}, {}),
    "state_dict_ema": (lambda sd: {"state_dict": _noise(sd), "state_dict_ema": sd}, {"use_ema": True}),
    "model_ema": (lambda sd: {"model": _noise(sd), "model_ema": sd}, {"use_ema": True}),
    "ddp_prefix": (lambda sd: _prefixed(sd, "module."), {}),
    "compile_prefix": (lambda sd: _prefixed(sd, "_orig_mod."), {}),
    "ddp_then_compile": (lambda sd: _prefixed(sd, "module._orig_mod."), {}),
    "compile_then_ddp": (lambda sd: _prefixed(sd, "_orig_mod.module."), {}),
}


def _prefixed(state_dict, prefix):
    return {prefix + key: value for key, value in state_dict.items()}


def _noise(state_dict):
    return {key: value + 1.0 for key, value in state_dict.items()}


def _served_outputs(server, name, images):
    client = TorchServeClient(server.config)
    response = client.predict(name, json.dumps({"inputs": images.tolist()}).encode())
    assert response.status == 200, response.body
    return torch.tensor(response.json()["outputs"])


def _serves_like_clean(server, spec, name, model):
    archive = build_archive(spec, export_path=server.config.model_store).archive
    register_archive(server.config, archive, workers=1)
    try:
        images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
        served = _served_outputs(server, name, images)
    finally:
        TorchServeClient(server.config).unregister(name)
    with torch.inference_mode():
        assert torch.allclose(served, model(images), atol=1e-5)


@pytest.mark.parametrize("layout", [*LAYOUTS, "safetensors"])
def test_layout_serves_like_the_clean_state_dict(torchserve, tmp_path, digits_model, layout):
    name = f"layout_{layout}"
    if layout == "safetensors":
        weights, checkpoint = tmp_path / "weights.safetensors", {}
        save_file(digits_model.state_dict(), str(weights))
    else:
        wrap, checkpoint = LAYOUTS[layout]
        weights = tmp_path / "weights.pt"
        torch.save(wrap(digits_model.state_dict()), weights)
    spec = write_spec(tmp_path, digits_spec_data(name=name, weights=weights.name,
                                                 **({"checkpoint": checkpoint} if checkpoint else {})))
    _serves_like_clean(torchserve, spec, name, digits_model)


@pytest.mark.parametrize("project", PUBLIC_LAYOUTS)
def test_public_projects_checkpoints_serve_with_at_most_one_spec_line(torchserve, tmp_path,
                                                                      digits_model, project):
    layout = PUBLIC_LAYOUTS[project]
    layout.write(digits_model, tmp_path / layout.filename)
    name = f"public_{project}"
    spec = write_spec(tmp_path, digits_spec_data(
        name=name, weights=layout.filename,
        **({"checkpoint": layout.spec_line} if layout.spec_line else {})))
    _serves_like_clean(torchserve, spec, name, digits_model)


def test_tampered_archive_never_serves(torchserve, tmp_path, digits_model):
    torch.save(digits_model.state_dict(), tmp_path / "weights.pt")
    spec = write_spec(tmp_path, digits_spec_data(name="tamper_me", weights="weights.pt"))
    store = torchserve.config.model_store
    built = build_archive(spec, export_path=store).archive
    tampered = tamper_weights(built, store / "tampered.mar", "weights.pt")

    refused = torchserve.mar("register", tampered, check=False)
    assert refused.returncode == 1
    assert "failed offline verification, so it was not registered" in refused.stderr
    assert "altered after `mar build`" in refused.stderr

    # Straight through the management API, the worker's own check stops it.
    client = TorchServeClient(torchserve.config)
    log = ModelLog(torchserve.config.model_log)
    response = client.register("tampered.mar", initial_workers=1, check=False)
    client.unregister("tamper_me", "1.0", check=False)
    assert response.status == 500
    assert "altered after `mar build`" in log.wait_for_worker_error("tamper_me", "1.0")
