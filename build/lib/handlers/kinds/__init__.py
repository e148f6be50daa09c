"""Input kinds: what one input of the spec is, beyond its shape and dtype. Each kind owns its spec
settings, how a request's value becomes sample arrays, its limits, its golden samples and its pad
value:

    tensor.py   numbers: nested lists, base64 or raw little-endian bytes, v2 tensors
    text.py     the tokenizer's input: strings (or UTF-8 bytes) tokenized, or token ids
    image.py    encoded JPEG/PNG/WebP images, decoded and preprocessed as the spec declares

`kind_of` picks an input's kind. The kinds import numpy (and their decoders) when first used, so
parsing a spec needs neither.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handlers.io_spec import InputSpec
    from handlers.kinds.tensor import TensorKind
    from handlers.spec import ModelSpec

__all__ = ["kind_of"]


def kind_of(spec: ModelSpec, model_input: InputSpec, files_dir: Path | None = None, *,
            contract: Callable[[], str] = lambda: "") -> TensorKind:
    """The kind of `model_input`. `files_dir` holds the spec's files (the tokenizer); `contract`
    describes the model's whole input contract, for messages."""
    if model_input.type == "image":
        from handlers.kinds.image import ImageKind

        return ImageKind(spec, model_input, contract)
    if spec.io.tokenizer is not None and spec.io.tokenizer.input == model_input.name:
        from handlers.kinds.text import TextKind

        return TextKind(spec, model_input, files_dir, contract)
    from handlers.kinds.tensor import TensorKind

    return TensorKind(spec, model_input, contract)
