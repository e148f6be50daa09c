"""The bundled example: scikit-learn's 8x8 digits, a small CNN, a state_dict on disk.

Only the state_dict is saved; serving rebuilds the network from model_defs/digits_cnn.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from model_defs import create_model

__all__ = ["DigitsSplit", "load_split", "train", "accuracy", "save_state_dict"]


@dataclass(frozen=True)
class DigitsSplit:
    train_images: np.ndarray  # (n, 1, 8, 8) float32 in [0, 1]
    train_labels: np.ndarray  # (n,) int64
    test_images: np.ndarray  # held back: the demo sends these through the server
    test_labels: np.ndarray


def load_split(seed: int = 0) -> DigitsSplit:
    """The 1,797 digits, scaled to [0, 1], split 80/20 stratified by class."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels)
    return DigitsSplit(train_x, train_y, test_x, test_y)


def train(split: DigitsSplit, params: dict, *, epochs: int = 40, seed: int = 0) -> nn.Module:
    """Train `digits_cnn` with `params` on the training images; returns it in eval mode."""
    torch.manual_seed(seed)
    model = create_model("digits_cnn", **params)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images = torch.from_numpy(split.train_images)
    labels = torch.from_numpy(split.train_labels)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.inference_mode():
        predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Write the weights only: never torch.save(model), which pickles code paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
