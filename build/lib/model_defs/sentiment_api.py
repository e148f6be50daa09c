"""Pre/post-processing a spec cannot declare, as an example: the sentiment model's public API takes
`{"text": ...}` and answers only the logits (the per-token states stay inside)."""

from pathlib import Path

from model_defs.registry import register_processor


@register_processor("sentiment_api")
class SentimentAPI:
    def __init__(self, files_dir: Path):
        self.files_dir = files_dir  # the archive's `files/`, for vocabularies and the like

    def decode(self, sent):
        """{"text": "..."} (or a list of texts) -> the model's input_ids; anything else as sent."""
        if isinstance(sent, dict) and set(sent) == {"text"}:
            return {"input_ids": sent["text"]}
        return sent

    def encode(self, outputs: dict) -> dict:
        return {"logits": outputs["logits"]}
