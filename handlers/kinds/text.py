"""Text inputs: the input the spec's `tokenizer` names takes strings (JSON strings, `text/*`
multipart parts, base64 or raw UTF-8 bytes, v2 BYTES), tokenized in the worker with a Hugging Face
`tokenizers` file, or token ids as numbers.

    tokenizer: {file: tokenizer.json, input: input_ids, add_special_tokens: true}

A text longer than `max` tokens could need is refused before tokenizing (about a second per MB of
text), and ids a client sends must lie in the tokenizer's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handlers.errors import RequestError
from handlers.kinds.tensor import Rows, TensorKind, is_b64, is_binary

__all__ = ["TextKind", "TokenizerSpec", "parse_tokenizer", "text_char_limit"]


@dataclass(frozen=True)
class TokenizerSpec:
    file: str  # a Hugging Face `tokenizers` JSON file, relative to the spec; packaged and hashed
    input: str  # the input whose strings are tokenized into ids
    add_special_tokens: bool = True


def parse_tokenizer(value: Any, inputs: tuple, problems: list[str]) -> TokenizerSpec | None:
    """The spec's `tokenizer` mapping; every problem appended to `problems`."""
    if not (isinstance(value, dict) and isinstance(value.get("file"), str)
            and isinstance(value.get("input"), str)):
        problems.append(f"`tokenizer` must be {{file: tokenizer.json, input: <the input that gets "
                        f"token ids>}}, got {value!r}")
        return None
    for key in sorted(set(value) - {"file", "input", "add_special_tokens"}, key=str):
        problems.append(f"unknown key `tokenizer.{key}` (allowed: file, input, add_special_tokens)")
    target = next((i for i in inputs if i.name == value["input"]), None)
    if target is None or target.dtype not in ("int64", "int32") or len(target.dynamic) != 1:
        problems.append(f"`tokenizer.input` {value['input']!r} must name an int64 or int32 input "
                        "with one dynamic dimension, e.g. {name: input_ids, dtype: int64, "
                        "shape: [null], max: [128]}")
    if value["file"].startswith("/") or ".." in value["file"].split("/"):
        problems.append(f"`tokenizer.file` {value['file']!r} must be a path inside the spec's folder")
    special = value.get("add_special_tokens", True)
    if not isinstance(special, bool):
        problems.append(f"`tokenizer.add_special_tokens` {special!r} must be true or false")
        special = True
    return TokenizerSpec(value["file"], value["input"], special)


def text_char_limit(tokenizer, max_tokens: int) -> int:
    """The longest text `max_tokens` tokens can need: each token at most the vocabulary's longest
    token, with as many characters again for the spaces and punctuation between them. A longer
    text is refused before tokenizing (a word the vocabulary lacks is one [UNK] however long)."""
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return (max_tokens + 1) * 2 * (longest + 1)


class TextKind(TensorKind):
    takes_bytes_elements = True
    noun = "text"

    def __init__(self, spec, model_input, files_dir: Path | None = None, contract=lambda: "") -> None:
        super().__init__(spec, model_input, contract)
        from tokenizers import Tokenizer

        self.settings = spec.io.tokenizer
        base = files_dir if files_dir is not None else spec.source.parent
        self.tokenizer = Tokenizer.from_file(str(base / self.settings.file))
        self.vocabulary = self.tokenizer.get_vocab_size()
        self.char_limit = text_char_limit(self.tokenizer, model_input.max[0])

    @property
    def byte_limit(self) -> int:
        return 4 * self.char_limit  # UTF-8

    def rows(self, value: Any, what: str, batched: bool) -> Rows:
        items = value if isinstance(value, list) else [value]
        if not (items and all(isinstance(v, (str, bytes)) or is_b64(v) for v in items)):
            return super().rows(value, what, batched)  # token ids
        return [self._tokenize(self._text(item, what), what) for item in items]

    def check(self, rows: Rows, what: str) -> None:
        """Ids lie in the vocabulary (an id past the embedding would fail the forward pass of the
        whole batch)."""
        for row in [rows] if isinstance(rows, np.ndarray) else rows:
            if row.size and (row.min() < 0 or row.max() >= self.vocabulary):
                bad = int(row.max() if row.max() >= self.vocabulary else row.min())
                raise RequestError(f"{what} holds token id {bad}, outside the tokenizer's "
                                   f"vocabulary of {self.vocabulary} (ids 0 to "
                                   f"{self.vocabulary - 1}); send ids from the same tokenizer, "
                                   "or the text")

    def bytes_elements(self, items: list, name: str) -> list:
        return items

    def _text(self, value: str | bytes | dict, what: str) -> str:
        if isinstance(value, str):
            return value
        try:
            return self.binary(value, what).decode("utf-8") if is_binary(value) else str(value)
        except UnicodeDecodeError as err:
            raise RequestError(f"{what} is not UTF-8 text ({err}); send text as a JSON string or "
                               "UTF-8 bytes") from None

    def _tokenize(self, text: str, what: str) -> np.ndarray:
        if len(text) > self.char_limit:
            raise RequestError(f"{what} is {len(text):,} characters, more than its max of "
                               f"{self.input.max[0]} tokens can hold with this tokenizer (at most "
                               f"{self.char_limit:,} characters); send a shorter text")
        ids = self.tokenizer.encode(text, add_special_tokens=self.settings.add_special_tokens).ids
        return np.asarray(ids, dtype=self.dtype)
