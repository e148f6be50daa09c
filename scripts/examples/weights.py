"""`python -m scripts.examples.weights`: seeded random weights for the example specs that have no bundled
training data (model_defs/specs/sentiment.yaml, speaker.yaml, resnet18.yaml, bert_sentiment.yaml),
so they build and serve as written. bert_sentiment's are saved in shards as `transformers` saves
large models.

    python -m scripts.examples.weights && mar build model_defs/specs/sentiment.yaml model_defs/specs/speaker.yaml
"""

from __future__ import annotations

import sys

import torch

from handlers.spec import load_spec
from model_defs import create_model
from scripts.config import REPO_ROOT
from scripts.examples.sharding import save_sharded

EXAMPLES = ("sentiment", "speaker", "resnet18", "detector", "segmenter")
SHARDED = {"bert_sentiment": 3}  # spec -> at most 1/3 of its weights per shard


def main() -> int:
    for name in (*EXAMPLES, *SHARDED):
        spec = load_spec(REPO_ROOT / "model_defs" / "specs" / f"{name}.yaml")
        torch.manual_seed(0)
        state = create_model(spec.arch, **spec.params).state_dict()
        weights = REPO_ROOT / spec.weights
        if name in SHARDED:
            size = sum(t.numel() * t.element_size() for t in state.values())
            save_sharded(state, weights, max_shard_bytes=size // SHARDED[name] + 1)
        else:
            weights.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, weights)
        print(f"wrote {weights} for {spec.name} ({spec.arch}, random weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
