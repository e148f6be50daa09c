"""Calibration and evaluation samples: files in a folder beside the spec, decoded and preprocessed
exactly as requests are (the handler's own InputCodec), then batched as the worker batches them
(its Batcher), so int8 ranges are calibrated, and the gate judged, on what the model will see.

    *.jpg *.jpeg *.png *.webp   an encoded image, for a one-image model
    *.npy                       one sample, or several stacked, for a one-input model
    *.txt                       a text, for the tokenizer's input
    *.json                      a request's `inputs` value: {"input_ids": ..., ...} or one sample
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from handlers.batching import Batcher
from handlers.device import input_dtype
from handlers.errors import MarError, PrecisionError
from handlers.golden_inputs import golden_inputs
from handlers.inputs import InputCodec, Part
from handlers.precision import SampleSet
from handlers.spec import ModelSpec

__all__ = ["sample_batches", "SAMPLE_SUFFIXES"]

SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".npy", ".txt", ".json")

Tensors = dict[str, "torch.Tensor | list[torch.Tensor]"]


def sample_batches(spec: ModelSpec, samples: SampleSet | None) -> tuple[list[Tensors], str]:
    """The samples as model-input batches of the spec's batch size, and where they came from.
    Without a sample set, the golden inputs (seeded noise: a poor stand-in, said in the note).
    Raises PrecisionError naming a file that is not a sample."""
    if samples is None:
        return golden_inputs(spec), "the golden inputs (seeded noise: a poor calibration and " \
                                    "evaluation set; name real samples in serving.precision)"
    folder = spec.source.parent / samples.files
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES) \
        if folder.is_dir() else []
    if not files:
        raise PrecisionError(f"{spec.source}: {folder} holds no samples ({', '.join(SAMPLE_SUFFIXES)}"
                             "); put request samples there, or fix serving.precision's `files`")
    files = files[: samples.count]
    codec = InputCodec(spec)
    parts = [_parts(codec, spec, file) for file in files]
    batcher = Batcher(spec, torch.device("cpu"), {i.name: input_dtype(spec, i) for i in spec.inputs},
                      {name: kind.pad_value for name, kind in codec.kinds.items()})
    size = spec.serving.batch_size
    batches = [b.inputs for start in range(0, len(parts), size)
               for b in batcher.batches(parts[start:start + size])]
    return batches, f"{len(files)} samples from {samples.files}"


def _parts(codec: InputCodec, spec: ModelSpec, file: Path) -> list[Part]:
    """One file as the worker decodes a request holding it. Raises PrecisionError."""
    first = spec.inputs[0].name
    suffix = file.suffix.lower()
    try:
        if suffix == ".json":
            value = json.loads(file.read_text())
            return codec.parts(value if isinstance(value, dict) and len(spec.inputs) > 1
                               else {first: value})
        if suffix == ".npy":
            return codec.parts({first: np.load(file, allow_pickle=False)})
        if suffix == ".txt":
            target = spec.io.tokenizer.input if spec.io.tokenizer else first
            return codec.parts({target: file.read_text().strip()})
        return codec.parts({first: file.read_bytes()})
    except (MarError, ValueError, OSError) as err:
        raise PrecisionError(f"{file} is not a sample this model takes ({err}); calibration "
                             "and evaluation files are requests, decoded as requests are") from None
