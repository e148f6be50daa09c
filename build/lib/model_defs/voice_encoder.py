"""A speaker encoder in the manner of resemblyzer's VoiceEncoder: an LSTM over mel frames of any
length, its last state projected and L2-normalised. Padding would change that last state, so it
serves without a mask: requests of different lengths run in separate forward passes."""

from torch import Tensor, nn

from model_defs.registry import register_model


@register_model("voice_encoder")
class VoiceEncoder(nn.Module):
    """forward(mels): (N, T, mel_channels) -> (N, embedding) unit vectors."""

    def __init__(self, mel_channels: int = 40, hidden: int = 64, layers: int = 2,
                 embedding: int = 64):
        super().__init__()
        self.lstm = nn.LSTM(mel_channels, hidden, num_layers=layers, batch_first=True)
        self.linear = nn.Linear(hidden, embedding)
        self.relu = nn.ReLU()

    def forward(self, mels: Tensor) -> Tensor:
        _, (hidden, _) = self.lstm(mels)
        embeds = self.relu(self.linear(hidden[-1]))
        return embeds / embeds.norm(dim=1, keepdim=True).clamp(min=1e-5)
