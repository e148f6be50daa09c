"""A small transformer encoder over token ids with an attention mask: sequence logits and the
per-token states, the shape of a text classifier's (or a tagger's) outputs."""

import torch
from torch import Tensor, nn

from model_defs.registry import register_model


@register_model("token_classifier")
class TokenClassifier(nn.Module):
    """forward(input_ids, attention_mask): (N, T) ids and mask -> logits (N, num_classes) pooled
    over the unmasked tokens, and token_states (N, T, dim)."""

    def __init__(self, vocab_size: int = 64, dim: int = 32, heads: int = 4, layers: int = 1,
                 num_classes: int = 2, max_len: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.embed(input_ids) + self.position(positions)
        states = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return self.head(pooled), states
