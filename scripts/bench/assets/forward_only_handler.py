"""The demo CNN's forward pass alone, for `mar bench` only: the model (`--model-file`, one class,
`--serialized-file` weights) set up as our handler sets the demo spec up (one thread,
channels-last, inference mode), and each batch answered after one forward pass over a batch of
zeros of its size. What serving this model costs with no request handling at all: ours /
forward-only is our handler's own overhead."""

import importlib
import inspect
import os

import torch

SAMPLE_SHAPE = (1, 8, 8)  # the demo digits CNN's input
_model = None


def _load(context) -> torch.nn.Module:
    torch.set_num_threads(1)
    module = importlib.import_module("model")  # model.py, on the archive's path
    (cls,) = [c for _, c in inspect.getmembers(module, inspect.isclass)
              if issubclass(c, torch.nn.Module) and c.__module__ == module.__name__]
    model = cls()
    weights = os.path.join(context.system_properties["model_dir"],
                           context.manifest["model"]["serializedFile"])
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval().to(memory_format=torch.channels_last)


def handle(data, context):
    global _model
    if _model is None:
        _model = _load(context)
    if data is None:
        return None
    batch = torch.zeros(len(data), *SAMPLE_SHAPE).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        _model(batch)
    return [b"{}"] * len(data)
