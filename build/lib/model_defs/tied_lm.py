"""A tiny language-model head: token embeddings tied to the output layer, plus position buffers.

It exists to keep the loading path honest: tied weights must stay tied, and non-persistent buffers
(which no checkpoint holds) must come out exactly as eager construction makes them.
"""

import math

import torch
from torch import Tensor, nn

from model_defs.registry import register_model


@register_model("tied_lm", example_input_shape=(8,), example_input_dtype="int64")
class TiedLM(nn.Module):
    """Input (N, seq_len) token ids; output (N, vocab_size) next-token logits."""

    def __init__(self, vocab_size: int = 32, dim: int = 16, max_len: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied
        angles = torch.arange(max_len)[:, None] / 10000 ** (torch.arange(dim)[None, :] / dim)
        self.register_buffer("positions", torch.sin(angles), persistent=False)
        self.register_buffer("scale", torch.tensor(1 / math.sqrt(dim)), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden = self.embed(tokens) + self.positions[: tokens.shape[1]]
        pooled = torch.tanh(self.mix(hidden)).mean(dim=1) * self.scale
        return self.head(pooled)
