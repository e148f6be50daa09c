"""Every accepted checkpoint layout, served by a real TorchServe, answers like the clean state_dict;
a tampered archive never serves."""

import json
from concurrent.futures import ThreadPoolExecutor

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
    assert response.status == 200, (name, response.body)
    return torch.tensor(response.json()["outputs"])


def _all_serve_like_clean(server, specs: dict, model):
    """Every spec's archive built, registered (their workers start side by side: a worker's
    start-up is mostly waiting on imports), and answering like `model`, layout by layout."""
    archives = {name: build_archive(spec, export_path=server.config.model_store).archive
                for name, spec in specs.items()}
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = model(images)
    with ThreadPoolExecutor(max_workers=4) as pool:
        registered = list(pool.map(lambda a: register_archive(server.config, a, workers=1),
                                   archives.values()))
    try:
        wrong = [name for name in specs
                 if not torch.allclose(_served_outputs(server, name, images), expected, atol=1e-5)]
    finally:
        for name in specs:
            TorchServeClient(server.config).unregister(name, check=False)
    assert len(registered) == len(specs) and wrong == []


def test_every_layout_serves_like_the_clean_state_dict(torchserve, tmp_path, digits_model):
    specs = {}
    for layout in [*LAYOUTS, "safetensors"]:
        folder, name = tmp_path / layout, f"layout_{layout}"
        folder.mkdir()
        if layout == "safetensors":
            weights, checkpoint = folder / "weights.safetensors", {}
            save_file(digits_model.state_dict(), str(weights))
        else:
            wrap, checkpoint = LAYOUTS[layout]
            weights = folder / "weights.pt"
            torch.save(wrap(digits_model.state_dict()), weights)
        specs[name] = write_spec(folder, digits_spec_data(
            name=name, weights=weights.name, **({"checkpoint": checkpoint} if checkpoint else {})))
    _all_serve_like_clean(torchserve, specs, digits_model)


def test_public_projects_checkpoints_serve_with_at_most_one_spec_line(torchserve, tmp_path,
                                                                      digits_model):
    specs = {}
    for project, layout in PUBLIC_LAYOUTS.items():
        folder, name = tmp_path / project, f"public_{project}"
        folder.mkdir()
        layout.write(digits_model, folder / layout.filename)
        specs[name] = write_spec(folder, digits_spec_data(
            name=name, weights=layout.filename,
            **({"checkpoint": layout.spec_line} if layout.spec_line else {})))
    _all_serve_like_clean(torchserve, specs, digits_model)


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
