"""A labelled output's predictions: per sample, the best label, its probability and the class
probabilities (the top `top_k`, or all). The softmax runs once per forward pass, over the whole
batch (`softmax`); each request gets its rows, and each protocol asks for them in its own form
(objects per sample in JSON, three tensors in the Open Inference Protocol), only when it answers
with them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Predictions", "softmax"]


def softmax(logits: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """Class probabilities of a batch's logits (per sample for a list), as float32: JSON then
    carries 9 digits, not 17."""
    if isinstance(logits, list):
        return [torch.softmax(sample.float(), dim=-1) for sample in logits]
    return torch.softmax(logits.float(), dim=-1)


class Predictions:
    """One request's class probabilities, (n, classes), against the spec's labels."""

    def __init__(self, probabilities: np.ndarray | list[np.ndarray], labels: tuple[str, ...],
                 top_k: int | None) -> None:
        self.probabilities = np.stack(probabilities) if isinstance(probabilities, list) \
            else probabilities
        self.labels, self.top_k = labels, top_k

    def per_sample(self) -> list[dict[str, Any]]:
        """{"label", "probability", "probabilities": {label: p}} per sample, for JSON."""
        labels, top_k = self.labels, self.top_k
        answers = []
        for row in self.probabilities:
            best = int(row.argmax())
            order = np.argsort(-row, kind="stable")[:top_k].tolist() if top_k else None
            listed = dict(zip(labels, row)) if order is None else {labels[i]: row[i] for i in order}
            answers.append({"label": labels[best], "probability": row[best],
                            "probabilities": listed})
        return answers

    def tensors(self) -> list[tuple[str, np.ndarray]]:
        """`label` (n,) names, `probability` (n,) and `probabilities` (n, top_k or all)."""
        probabilities = self.probabilities
        best = probabilities.argmax(axis=-1)
        listed = probabilities if not self.top_k else np.take_along_axis(
            probabilities, np.argsort(-probabilities, axis=-1, kind="stable")[:, :self.top_k], -1)
        return [("label", np.array([self.labels[i] for i in best.tolist()], dtype=object)),
                ("probability", probabilities[np.arange(len(best)), best]),
                ("probabilities", listed)]
