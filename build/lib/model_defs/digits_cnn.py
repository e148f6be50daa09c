"""A small CNN for 8x8 grey-scale digits (scikit-learn's bundled `load_digits`)."""

from torch import Tensor, nn

from model_defs.registry import register_model


@register_model("digits_cnn")  # its example input comes from model_defs/specs/digits_cnn.yaml
class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, one 2x2 pooling, two linear layers; input (N, 1, 8, 8) in [0, 1]."""

    def __init__(self, channels: int = 16, hidden: int = 64, num_classes: int = 10,
                 dropout: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
