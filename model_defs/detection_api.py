"""The answer TorchServe's stock `object_detector` handler gives, for clients written against it:
per image a list of `{"<label name>": [x1, y1, x2, y2], "score": s}`. Name it in a detector's
spec with `processor: stock_detection_answer` (ours and KServe v1 replies; v2 stays tensors)."""

from __future__ import annotations

from pathlib import Path

from model_defs.registry import register_processor

__all__ = ["StockDetectionAnswer"]


@register_processor("stock_detection_answer")
class StockDetectionAnswer:
    def __init__(self, files_dir: Path) -> None:
        self.files_dir = files_dir

    def decode(self, sent):
        return sent

    def encode(self, outputs: dict) -> list[list[dict]]:
        """Each image's boxes, scores and label names (the spec's `labels`) in the stock shape."""
        return [[{str(label): [float(v) for v in box], "score": float(score)}
                 for box, score, label in zip(boxes, scores, labels)]
                for boxes, scores, labels in zip(outputs["boxes"], outputs["scores"],
                                                 outputs["labels"])]
