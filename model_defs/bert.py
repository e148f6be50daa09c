"""A BERT encoder written the way Hugging Face's `transformers` writes it (BertModel,
BertForSequenceClassification), with its module and parameter names, so a checkpoint saved by
`BertForSequenceClassification.save_pretrained` of the same size loads key for key:

    bert.embeddings.{word,position,token_type}_embeddings.weight, bert.embeddings.LayerNorm.*
    bert.encoder.layer.{i}.attention.self.{query,key,value}.*, .attention.output.{dense,LayerNorm}.*
    bert.encoder.layer.{i}.intermediate.dense.*, .output.{dense,LayerNorm}.*
    bert.pooler.dense.*, classifier.*

forward(input_ids, attention_mask) -> logits; padded positions (mask 0) change nothing else.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model_defs.registry import register_model

__all__ = ["BertForSequenceClassification"]


class BertEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_positions: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0),
                             persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        types = torch.zeros_like(input_ids)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions)
                              + self.token_type_embeddings(types))


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.size = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))

    def forward(self, states: Tensor, mask_bias: Tensor) -> Tensor:
        batch, length, hidden = states.shape
        split = lambda x: x.view(batch, length, self.heads, self.size).transpose(1, 2)
        q, k, v = split(self.query(states)), split(self.key(states)), split(self.value(states))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.size) + mask_bias
        context = scores.softmax(dim=-1) @ v
        return context.transpose(1, 2).reshape(batch, length, hidden)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, states: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(states) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)
        self.output = BertSelfOutput(hidden, eps)

    def forward(self, states: Tensor, mask_bias: Tensor) -> Tensor:
        return self.output(self.self(states, mask_bias), states)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, states: Tensor) -> Tensor:
        return nn.functional.gelu(self.dense(states))


class BertOutput(nn.Module):
    def __init__(self, hidden: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, states: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(states) + residual)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.attention = BertAttention(hidden, heads, eps)
        self.intermediate = BertIntermediate(hidden, intermediate)
        self.output = BertOutput(hidden, intermediate, eps)

    def forward(self, states: Tensor, mask_bias: Tensor) -> Tensor:
        attended = self.attention(states, mask_bias)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(hidden, heads, intermediate, eps)
                                   for _ in range(layers))

    def forward(self, states: Tensor, mask_bias: Tensor) -> Tensor:
        for layer in self.layer:
            states = layer(states, mask_bias)
        return states


class BertPooler(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, states: Tensor) -> Tensor:
        return torch.tanh(self.dense(states[:, 0]))


class BertModel(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int,
                 max_positions: int, eps: float) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(vocab_size, hidden, max_positions, eps)
        self.encoder = BertEncoder(layers, hidden, heads, intermediate, eps)
        self.pooler = BertPooler(hidden)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # masked keys get a large negative bias, as transformers' extended attention mask does
        mask_bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        states = self.encoder(self.embeddings(input_ids), mask_bias.to(self.pooler.dense.weight.dtype))
        return self.pooler(states)


@register_model("bert_classifier")
class BertForSequenceClassification(nn.Module):
    """transformers' BertForSequenceClassification: the pooled [CLS] state through a linear head.
    The defaults are a small BERT; bert-base is hidden 768, layers 12, heads 12, intermediate 3072,
    max_positions 512, vocab_size 30522."""

    def __init__(self, vocab_size: int = 32, hidden: int = 32, layers: int = 2, heads: int = 4,
                 intermediate: int = 64, max_positions: int = 64, num_labels: int = 2,
                 layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.bert = BertModel(vocab_size, hidden, layers, heads, intermediate, max_positions,
                              layer_norm_eps)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.classifier(self.bert(input_ids, attention_mask))
