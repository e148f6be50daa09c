"""A configurable multi-layer perceptron for flat feature vectors."""

from torch import Tensor, nn

from model_defs.registry import register_model

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@register_model("mlp", example_input_shape=(16,))
class MLP(nn.Module):
    """Linear layers of `hidden_sizes` with an activation between them; input (N, in_features)."""

    def __init__(self, in_features: int = 16, hidden_sizes: tuple[int, ...] = (64, 64),
                 out_features: int = 4, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(_ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
