"""A one-stage anchor detector with torchvision's detection interface: in eval mode, forward takes
a list of images of their own sizes (`List[Tensor[3, H, W]]`, values 0..1) and returns one dict per
image, `{"boxes": [N, 4] (x1, y1, x2, y2 in the image's pixels), "scores": [N], "labels": [N]
(int64; 0 is the background class and never returned)}`, N decided by the image's content.

A backbone (stride 8), a head predicting class logits and box deltas for each anchor, box decoding
as torchvision's BoxCoder does it, a score threshold, the best `candidates`, class-wise NMS, at most
`detections` boxes. Each image runs alone, so its answer never depends on its batch neighbours.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model_defs.registry import register_model

__all__ = ["AnchorDetector", "box_iou", "nms"]

_MAX_LOG_SCALE = math.log(1000.0 / 16)  # torchvision's clamp on decoded box sizes


def box_iou(boxes: Tensor, others: Tensor) -> Tensor:
    """[len(boxes), len(others)] intersection over union of x1y1x2y2 boxes."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    other_area = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    top_left = torch.max(boxes[:, None, :2], others[None, :, :2])
    bottom_right = torch.min(boxes[:, None, 2:], others[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return overlap / (area[:, None] + other_area[None, :] - overlap).clamp(min=1e-9)


def nms(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    kept = []
    while order.numel():
        best, order = order[0], order[1:]
        kept.append(best)
        if order.numel():
            order = order[box_iou(boxes[best][None], boxes[order])[0] <= threshold]
    return torch.stack(kept) if kept else torch.zeros(0, dtype=torch.int64, device=boxes.device)


@register_model("anchor_detector")
class AnchorDetector(nn.Module):
    def __init__(self, num_classes: int = 3, channels: int = 16,
                 anchor_sizes: tuple[float, ...] = (16.0, 32.0), score_threshold: float = 0.5,
                 nms_threshold: float = 0.5, candidates: int = 1000, detections: int = 100):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU())
        anchors = len(anchor_sizes)
        self.cls_logits = nn.Conv2d(channels, anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, anchors * 4, 3, padding=1)
        self.register_buffer("anchor_sizes", torch.tensor(anchor_sizes), persistent=False)
        self.num_classes, self.stride = num_classes, 8
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.candidates, self.detections = candidates, detections

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return [self._detect(image) for image in images]

    def _detect(self, image: Tensor) -> dict[str, Tensor]:
        features = self.backbone(image[None])
        logits = self.cls_logits(features)[0].permute(1, 2, 0).reshape(-1, self.num_classes)
        deltas = self.bbox_pred(features)[0].permute(1, 2, 0).reshape(-1, 4)
        boxes = self._decoded(deltas, self._anchors(*features.shape[-2:], image.dtype),
                              *image.shape[-2:])
        scores = logits.sigmoid()[:, 1:]  # class 0 is the background
        anchor, label = (scores > self.score_threshold).nonzero(as_tuple=True)
        scores, boxes, label = scores[anchor, label], boxes[anchor], label + 1
        best = torch.sort(scores, descending=True, stable=True).indices[: self.candidates]
        scores, boxes, label = scores[best], boxes[best], label[best]
        # class-wise NMS in one pass: each class's boxes moved apart from the others'
        apart = boxes + (label.to(boxes.dtype) * (boxes.max() + 1 if boxes.numel() else 1))[:, None]
        kept = nms(apart, scores, self.nms_threshold)[: self.detections]
        return {"boxes": boxes[kept], "scores": scores[kept], "labels": label[kept]}

    def _anchors(self, rows: int, columns: int, dtype: torch.dtype) -> Tensor:
        """[rows * columns * anchors, 4]: square anchors of each size, centred on each cell."""
        device = self.anchor_sizes.device
        ys = (torch.arange(rows, device=device, dtype=dtype) + 0.5) * self.stride
        xs = (torch.arange(columns, device=device, dtype=dtype) + 0.5) * self.stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
        half = self.anchor_sizes.to(dtype)[None, :, None] / 2
        return (centres + torch.cat([-half, -half, half, half], dim=-1)).reshape(-1, 4)

    @staticmethod
    def _decoded(deltas: Tensor, anchors: Tensor, height: int, width: int) -> Tensor:
        """torchvision's BoxCoder (weights 1) decode, clipped to the image."""
        sizes = anchors[:, 2:] - anchors[:, :2]
        centres = anchors[:, :2] + sizes / 2 + deltas[:, :2] * sizes
        half = sizes * deltas[:, 2:].clamp(max=_MAX_LOG_SCALE).exp() / 2
        boxes = torch.cat([centres - half, centres + half], dim=1)
        limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        return torch.min(boxes.clamp(min=0), limits)
