"""Sharded checkpoints for real: a BERT classifier saved in shards as `transformers` saves it,
served through TorchServe (mixed lengths at once, each answer equal to that text alone in eager
PyTorch); and the memory a sharded load costs, measured in a fresh process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import yaml
from tokenizers import Tokenizer

from model_defs import create_model
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.examples.sharding import save_sharded
from scripts.manage import register_archive
from tests.helpers import REPO_ROOT

SPECS = REPO_ROOT / "model_defs" / "specs"
TEXTS = ["the movie was good", "bad", "i really liked the plot and the acting but not the story",
         "fun", "the film was boring and the acting was terrible", "great", "ok", "not bad at all"]


@pytest.fixture(scope="module")
def served(torchserve, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    data = yaml.safe_load((SPECS / "bert_sentiment.yaml").read_text())
    shutil.copyfile(SPECS / data["tokenizer"]["file"], folder / data["tokenizer"]["file"])
    torch.manual_seed(0)
    model = create_model(data["arch"], **data["params"]).eval()
    state = model.state_dict()
    size = sum(t.numel() * t.element_size() for t in state.values())
    save_sharded(state, folder / "checkpoint", max_shard_bytes=size // 3 + 1)
    (folder / "spec.yaml").write_text(yaml.safe_dump({**data, "weights": "checkpoint"}))
    register_archive(torchserve.config, build_archive(
        folder / "spec.yaml", export_path=torchserve.config.model_store).archive, workers=1)
    yield torchserve, model, Tokenizer.from_file(str(folder / data["tokenizer"]["file"]))
    TorchServeClient(torchserve.config).unregister("bert_sentiment", check=False)


def test_sharded_bert_answers_mixed_lengths_as_each_text_alone_in_eager(served):
    server, model, tokenizer = served
    client = TorchServeClient(server.config)

    def ask(text):
        body = json.dumps({"inputs": {"input_ids": text}}).encode()
        return client.predict("bert_sentiment", body).json()

    with ThreadPoolExecutor(max_workers=16) as pool:  # batch_size 8: they share batches
        answers = list(pool.map(ask, TEXTS * 3))
    for text, answer in zip(TEXTS * 3, answers):
        ids = torch.tensor([tokenizer.encode(text).ids])
        with torch.inference_mode():
            expected = model(ids, torch.ones_like(ids))[0]
        assert torch.allclose(torch.tensor(answer["outputs"][0]), expected, atol=1e-5), text
        assert answer["predictions"][0]["label"] == ["negative", "positive"][int(expected.argmax())]


MEASURE = r"""
import json, sys
from pathlib import Path
import torch
from handlers.construction import build_model
from handlers.spec import load_spec
def status(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) << 10
spec = load_spec(sys.argv[1])
torch.ones(1) @ torch.ones(1)  # torch's own start-up, before the baseline
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
peak_before, anon_before = status("VmRSS"), status("RssAnon")
loaded = build_model(spec, Path(sys.argv[2]), device=torch.device("cpu"))
with torch.inference_mode():
    loaded.model(torch.ones(1, spec.inputs[0].shape[0]))  # every weight touched
print(json.dumps({"peak_growth": status("VmHWM") - peak_before,
                  "anon_growth": status("RssAnon") - anon_before}))
"""


def test_a_sharded_load_peaks_near_the_model_not_twice_it(tmp_path):
    width = 2048  # four 2048x2048 fp32 layers: 64 MiB of weights, in 4 shards of 16 MiB
    params = {"in_features": width, "hidden_sizes": [width] * 3, "out_features": width}
    torch.manual_seed(0)
    state = create_model("mlp", **params).state_dict()
    weights = sum(t.numel() * t.element_size() for t in state.values())
    index = save_sharded(state, tmp_path / "checkpoint", max_shard_bytes=weights // 4 + 1)
    largest = max(p.stat().st_size for p in index.parent.glob("model-*.safetensors"))
    del state
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "mlp", "version": "1", "arch": "mlp", "params": params,
                                    "weights": "checkpoint", "input": {"shape": [width]}}))
    result = subprocess.run([sys.executable, "-c", MEASURE, str(spec), str(index)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    print(f"\nsharded load of {weights / 2**20:.0f} MiB in shards of at most "
          f"{largest / 2**20:.0f} MiB: peak resident +{measured['peak_growth'] / 2**20:.0f} MiB, "
          f"anonymous +{measured['anon_growth'] / 2**20:.0f} MiB")
    slack = 16 << 20  # the allocator's and the forward pass's own; a copy of the weights is 64
    assert measured["peak_growth"] <= weights + largest + slack, measured
    assert measured["anon_growth"] <= largest + slack, measured  # the weights stay file-backed
