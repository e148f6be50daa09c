"""A fully convolutional segmenter with torchvision's segmentation interface: forward(x: [N, 3, H,
W]) -> {"out": [N, num_classes, H, W]}, per-pixel class logits at the input's own height and width
(a backbone of stride 4, a classifier head, bilinear upsampling back to the input, as FCN and
DeepLab do)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional

from model_defs.registry import register_model

__all__ = ["FCNSegmenter"]


@register_model("fcn_segmenter")
class FCNSegmenter(nn.Module):
    def __init__(self, num_classes: int = 4, channels: int = 16):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.classifier(self.backbone(x))
        return {"out": functional.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                              align_corners=False)}
