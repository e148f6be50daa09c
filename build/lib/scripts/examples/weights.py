"""`python -m scripts.examples.weights`: seeded random weights for the example specs that have no bundled
training data (model_defs/specs/sentiment.yaml, speaker.yaml), so they build and serve as written.

    python -m scripts.examples.weights && mar build model_defs/specs/sentiment.yaml model_defs/specs/speaker.yaml
"""

from __future__ import annotations

import sys

import torch

from handlers.spec import load_spec
from model_defs import create_model
from scripts.config import REPO_ROOT

EXAMPLES = ("sentiment", "speaker", "resnet18")


def main() -> int:
    for name in EXAMPLES:
        spec = load_spec(REPO_ROOT / "model_defs" / "specs" / f"{name}.yaml")
        torch.manual_seed(0)
        weights = REPO_ROOT / spec.weights
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(create_model(spec.arch, **spec.params).state_dict(), weights)
        print(f"wrote {weights} for {spec.name} ({spec.arch}, random weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
