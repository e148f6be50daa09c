"""Sharded checkpoints, saved as `transformers` saves them (scripts/examples/sharding.py): the index
or its folder as `weights`, every shard checked against the index and refused by name, the keys
normalised across the shards, the shards packaged as they are and checked at load."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from handlers.construction import build_model
from handlers.errors import WeightsError
from handlers.shards import resolve_weights
from handlers.spec import load_spec
from model_defs import create_model
from scripts.build import build_archive
from scripts.examples.sharding import save_sharded
from tests.helpers import REPO_ROOT, InProcessHandler, write_spec

CPU = torch.device("cpu")
PARAMS = {"vocab_size": 32, "hidden": 32, "layers": 2, "heads": 4, "intermediate": 64,
          "max_positions": 64, "num_labels": 2}


@pytest.fixture
def bert():
    torch.manual_seed(0)
    return create_model("bert_classifier", **PARAMS).eval()


def _spec(folder, weights: str, **extra):
    shutil.copyfile(REPO_ROOT / "model_defs" / "specs" / "sentiment_tokenizer.json",
                    folder / "sentiment_tokenizer.json")
    data = {"name": "bert_sentiment", "version": "1.0", "arch": "bert_classifier",
            "params": PARAMS, "weights": weights,
            "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [None], "max": [64]},
                       {"name": "attention_mask", "dtype": "int64", "shape": [None], "max": [64]}],
            "attention_mask": "attention_mask",
            "tokenizer": {"file": "sentiment_tokenizer.json", "input": "input_ids"},
            "outputs": ["logits"], "labels": ["negative", "positive"], **extra}
    return write_spec(folder, data)


def _sharded(model, folder, shards=3, safetensors=True, state=None):
    state = state if state is not None else model.state_dict()
    size = sum(t.numel() * t.element_size() for t in state.values())
    return save_sharded(state, folder, max_shard_bytes=size // shards + 1, safetensors=safetensors)


def _build(spec, weights):
    return build_model(load_spec(spec), resolve_weights(weights), device=CPU)


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids, torch.ones_like(ids))


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("point_at", ["index", "folder"])
def test_an_index_or_its_folder_loads_shard_by_shard_equal_to_the_model(tmp_path, bert,
                                                                        safetensors, point_at):
    index = _sharded(bert, tmp_path / "checkpoint", safetensors=safetensors)
    assert len(json.loads(index.read_text())["weight_map"]) == len(bert.state_dict())
    weights = index if point_at == "index" else index.parent
    loaded = _build(_spec(tmp_path, str(weights)), weights)
    shards = len(list(index.parent.glob("*-of-*")))
    assert shards >= 3 and loaded.checkpoint_notes[0].startswith(
        f"read {shards} shards of {index.name}")
    ids = torch.randint(1, 32, (2, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(loaded.model, ids), _logits(bert, ids))


def _rewrite(shard, change):
    state = load_file(str(shard))
    change(state)
    save_file(state, str(shard), metadata={"format": "pt"})


@pytest.mark.parametrize("fault", ["a missing shard", "a tensor its shard lacks",
                                   "a tensor in two shards", "a tensor the index lacks",
                                   "a shard the index does not name"])
def test_each_shard_fault_is_refused_by_name_and_its_fix_builds(tmp_path, bert, fault):
    index = _sharded(bert, tmp_path / "checkpoint")
    first, second = sorted(index.parent.glob("model-*.safetensors"))[:2]
    backup = tmp_path / "backup"
    shutil.copytree(index.parent, backup)
    weight_map = json.loads(index.read_text())["weight_map"]
    moved = next(name for name, file in weight_map.items() if file == first.name)
    if fault == "a missing shard":
        second.unlink()
        expected = f"names shard(s) {second.name}, missing from"
    elif fault == "a tensor its shard lacks":
        _rewrite(first, lambda state: state.pop(moved))
        expected = f"lacks {moved}, which {index.name} places in it"
    elif fault == "a tensor in two shards":
        _rewrite(second, lambda state: state.update({moved: load_file(str(first))[moved]}))
        expected = f"tensor {moved} is in both {first.name} and {second.name}"
    elif fault == "a tensor the index lacks":
        _rewrite(second, lambda state: state.update({"bert.extra.weight": torch.zeros(2)}))
        expected = f"holds bert.extra.weight, which {index.name} does not list"
    else:
        save_file({"x": torch.zeros(1)}, str(index.parent / "model-00009-of-00009.safetensors"))
        expected = "holds shard(s) model-00009-of-00009.safetensors that model.safetensors.index.json"
    spec = _spec(tmp_path, "checkpoint")
    with pytest.raises(WeightsError) as refused:
        build_archive(spec, export_path=tmp_path / "store")
    assert expected in str(refused.value)
    assert not (tmp_path / "store").exists()
    shutil.rmtree(index.parent)
    shutil.copytree(backup, index.parent)  # the fix: the shards written with the index
    assert build_archive(spec, export_path=tmp_path / "store").archive.is_file()


def test_a_folder_with_one_plain_checkpoint_or_two_indexes(tmp_path, bert):
    plain = tmp_path / "plain"
    plain.mkdir()
    torch.save(bert.state_dict(), plain / "pytorch_model.bin")
    assert build_archive(_spec(tmp_path, "plain"), export_path=tmp_path / "store").archive.is_file()
    both = tmp_path / "both"
    _sharded(bert, both)
    _sharded(bert, both, safetensors=False)
    with pytest.raises(WeightsError, match="holds 2 shard indexes .* e.g. weights: "
                                           "both/model.safetensors.index.json"):
        build_archive(_spec(tmp_path, "both"), export_path=tmp_path / "store2")
    fixed = _spec(tmp_path, "both/model.safetensors.index.json")  # the line the message gives
    assert build_archive(fixed, export_path=tmp_path / "store2").archive.is_file()


def test_strip_prefix_and_key_apply_across_the_shards(tmp_path, bert):
    prefixed = {**{f"model.{k}": v for k, v in bert.state_dict().items()},
                "criterion.pos_weight": torch.tensor([2.0])}
    _sharded(bert, tmp_path / "lightning", state=prefixed)
    spec = _spec(tmp_path, "lightning", checkpoint={"strip_prefix": "model."})
    loaded = _build(spec, tmp_path / "lightning")
    assert any("stripped prefix `model.`" in note for note in loaded.checkpoint_notes)
    wrapped = tmp_path / "wrapped"
    index = _sharded(bert, wrapped, safetensors=False)
    for shard in sorted(wrapped.glob("pytorch_model-*.bin")):  # each shard {"model": part, ...}
        torch.save({"model": torch.load(shard, weights_only=True), "epoch": 3}, shard)
    spec = _spec(tmp_path, "wrapped", checkpoint={"key": "model"})
    loaded = _build(spec, index)
    ids = torch.randint(1, 32, (1, 5), generator=torch.Generator().manual_seed(2))
    assert torch.equal(_logits(loaded.model, ids), _logits(bert, ids))


def test_checkpoint_key_on_safetensors_is_refused_with_the_line_that_works(tmp_path, bert):
    _sharded(bert, tmp_path / "checkpoint")
    with pytest.raises(WeightsError, match=r'safetensors file: one flat mapping .* checkpoint: '
                                           r'\{strip_prefix: "model."\}'):
        build_archive(_spec(tmp_path, "checkpoint", checkpoint={"key": "model"}),
                      export_path=tmp_path / "store")


def test_shards_are_packaged_as_they_are_and_a_changed_one_fails_the_worker(tmp_path, bert):
    index = _sharded(bert, tmp_path / "checkpoint")
    archive = build_archive(_spec(tmp_path, "checkpoint"), export_path=tmp_path / "store").archive
    with zipfile.ZipFile(archive) as mar:
        record = json.loads(mar.read("build-info.json"))
        for shard in index.parent.glob("model-*.safetensors"):
            assert mar.read(shard.name) == shard.read_bytes()
        mar.extractall(tmp_path / "extracted")
    assert record["weights"]["file"] == index.name
    assert [s["file"] for s in record["shards"]] == sorted(
        p.name for p in index.parent.glob("model-*.safetensors"))
    InProcessHandler(tmp_path / "extracted")  # starts
    shard = tmp_path / "extracted" / record["shards"][1]["file"]
    _rewrite(shard, lambda state: state.update({k: v + 1 for k, v in state.items()}))
    with pytest.raises(WeightsError, match=f"{shard.name} in .* do\\(es\\) not match"):
        InProcessHandler(tmp_path / "extracted")
