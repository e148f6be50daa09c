"""Rebuild a model from its spec and load its checkpoint: the one loading path.

`mar build` validates weights with `build_model` before packaging, and every worker loads the
packaged weights with it, so a model that built is a model that loads.

Loading is fast: parameters are created on the meta device (no memory, no random init), the
checkpoint is memory-mapped, and `load_state_dict(assign=True)` adopts its tensors. Buffers are
still built eagerly, so non-persistent ones (not in any checkpoint) come out exactly as eager
construction makes them, and tied parameters are tied again after loading.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from handlers.checkpoint import read_checkpoint
from handlers.device import model_dtype
from handlers.errors import ArchitectureError, MarError, SpecError, WeightsError
from handlers.hashing import blake3_file
from handlers.matching import LoadPlan, align_prefix, match_state_dict, tie_groups
from handlers.precision import dynamic_int8
from handlers.spec import ModelSpec
from model_defs import create_model

__all__ = ["LoadedModel", "build_model"]


@dataclass
class LoadedModel:
    model: nn.Module
    checkpoint_notes: list[str]
    plan: LoadPlan


def build_model(spec: ModelSpec, weights_path: Path, *, device: torch.device,
                expected_blake3: dict[str, str] | None = None) -> LoadedModel:
    """Construct `spec.arch` with `spec.params`, load the checkpoint (a file, or a shard index)
    strictly (or as the spec's `checkpoint` section allows), return it in eval mode on `device`
    at the spec's precision.

    With `expected_blake3` ({file name beside the weights: digest}, every file of the weights),
    the files are hashed while the model is constructed and a mismatch raises WeightsError before
    any weight is used. Raises WeightsError or ArchitectureError.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(_blake3_files, weights_path.parent, list(expected_blake3)) \
            if expected_blake3 else None
        checkpoint = read_checkpoint(weights_path, spec.checkpoint)
        # A partial load keeps the constructor's values for what is missing, so it needs them real.
        partial = bool(spec.checkpoint.allow_missing)
        model = _construct(spec, parameters_on_meta=not partial)
        if not (spec.checkpoint.strip_prefix or spec.checkpoint.add_prefix):
            align_prefix(model, checkpoint)
        plan = match_state_dict(model, checkpoint.state_dict, spec=spec, weights_path=weights_path)
        altered = [name for name, found in (digest.result() if digest else {}).items()
                   if found != expected_blake3[name]]
        if altered:
            raise WeightsError(
                f"{', '.join(altered)} in {weights_path.parent} do(es) not match the archive's "
                "build record (BLAKE3): the archive was altered after `mar build`. Rebuild it "
                "from the spec and the original weights.")
    _load(model, checkpoint.state_dict, plan, assign=not partial)
    model = model.eval().to(device=device, dtype=model_dtype(spec))
    if spec.serving.precision == "int8" and spec.serving.precision_settings.mode == "dynamic":
        if device.type != "cpu":
            raise SpecError(f"{spec.source}: dynamic int8 runs on CPUs only (torch's quantized "
                            f"Linear and LSTM kernels), and this worker serves on {device}. Serve "
                            "fp16 or bf16 on a GPU, or set serving.device: cpu.")
        model = dynamic_int8(model)
    return LoadedModel(model, checkpoint.notes, plan)


def _blake3_files(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: blake3_file(folder / name) for name in names}


def _construct(spec: ModelSpec, *, parameters_on_meta: bool) -> nn.Module:
    context = _parameters_on_meta() if parameters_on_meta else contextlib.nullcontext()
    try:
        with context:
            return create_model(spec.arch, **spec.params)
    except MarError:
        raise
    except Exception as err:  # the constructor's own check of its params, most often
        raise ArchitectureError(f"{spec.source}: building {spec.arch!r} with params {spec.params} "
                                f"failed: {type(err).__name__}: {err}. Fix `params` in the spec."
                                ) from err


@contextlib.contextmanager
def _parameters_on_meta():
    """Register every new parameter on the meta device: no memory, and init ops become no-ops.

    Buffers stay real, so values computed in __init__ (non-persistent buffers) are exact. A
    parameter that is already on meta is registered as is, so weight tying survives.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _load(model: nn.Module, state_dict: dict[str, Tensor], plan: LoadPlan, *, assign: bool) -> None:
    groups = tie_groups(model)
    kept = {k: v for k, v in state_dict.items() if k not in plan.ignored_unexpected}
    complete = set(kept) == set(model.state_dict())
    # strict=True whenever the checkpoint names every key; match_state_dict already proved the rest.
    model.load_state_dict(kept, strict=complete, assign=assign)
    _retie(model, groups, kept)


def _retie(model: nn.Module, groups: list[list[str]], state_dict: Mapping[str, Tensor]) -> None:
    """Point every name of a tie group at one Parameter again (assign=True gave each its own)."""
    for group in groups:
        source = next((name for name in group if name in state_dict), group[0])
        shared = model.get_parameter(source)
        for name in group:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._parameters[leaf] = shared
