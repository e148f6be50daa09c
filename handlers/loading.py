"""Rebuild a model from its spec and load its checkpoint: the one loading path.

`mar build` validates weights with these functions before packaging, and the TorchServe handler
loads the packaged weights with the same functions, so a model that built is a model that loads.
This file travels inside every archive: it imports only torch (safetensors for .safetensors
weights), the spec module and model_defs.

Loading never runs code from the checkpoint (`weights_only=True`, or safetensors), and it is fast:
parameters are created on the meta device (no memory, no random init), the checkpoint is memory-
mapped, and `load_state_dict(assign=True)` adopts its tensors. Buffers are still built eagerly, so
non-persistent ones (not in any checkpoint) come out exactly as eager construction makes them, and
tied parameters are tied again after loading.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import pickle
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from handlers.spec import ModelSpec
from model_defs import create_model

__all__ = [
    "WeightsError",
    "Checkpoint",
    "LoadedModel",
    "build_model",
    "read_checkpoint",
    "match_state_dict",
    "sha256_file",
    "blake3_file",
    "select_device",
    "model_dtype",
    "input_dtype",
    "example_input",
]

# Wrappers that training loops put around the state_dict, next to optimizer state, epoch, etc.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_EMA_KEYS = ("state_dict_ema", "model_ema")
# Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
_PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_HASH_CHUNK = 16 << 20


class WeightsError(ValueError):
    """The weights file cannot be loaded into the architecture; the message says why and the fix."""


@dataclass
class Checkpoint:
    state_dict: dict[str, Tensor]
    notes: list[str] = field(default_factory=list)  # what was normalised, for the build's output


@dataclass(frozen=True)
class LoadPlan:
    let_through_missing: tuple[str, ...] = ()  # model keys left as constructed (allow_missing)
    ignored_unexpected: tuple[str, ...] = ()  # checkpoint keys dropped (ignore_unexpected)


@dataclass
class LoadedModel:
    model: nn.Module
    checkpoint_notes: list[str]
    plan: LoadPlan


def build_model(spec: ModelSpec, weights_path: Path, *, device: torch.device,
                expected_blake3: str | None = None) -> LoadedModel:
    """Construct `spec.arch` with `spec.params`, load the checkpoint strictly (or as the spec's
    `checkpoint` section allows), return it in eval mode on `device` at the spec's precision.

    With `expected_blake3`, the file is hashed while the model is constructed and a mismatch
    raises WeightsError before any weight is used. Raises WeightsError, KeyError or TypeError.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(blake3_file, weights_path) if expected_blake3 else None
        checkpoint = read_checkpoint(weights_path, use_ema=spec.checkpoint.use_ema)
        # A partial load keeps the constructor's values for what is missing, so it needs them real.
        partial = bool(spec.checkpoint.allow_missing)
        model = _construct(spec, parameters_on_meta=not partial)
        plan = match_state_dict(model, checkpoint.state_dict, spec=spec, weights_path=weights_path)
        if digest is not None and digest.result() != expected_blake3:
            raise WeightsError(
                f"{weights_path} does not match the archive's build record (BLAKE3 "
                f"{digest.result()} != {expected_blake3}): the archive was altered after `mar build`. "
                "Rebuild it from the spec and the original weights.")
    _load(model, checkpoint.state_dict, plan, assign=not partial)
    return LoadedModel(model.eval().to(device=device, dtype=model_dtype(spec)), checkpoint.notes, plan)


def read_checkpoint(path: Path, *, use_ema: bool = False) -> Checkpoint:
    """Load a checkpoint without executing code, unwrap it and strip training prefixes."""
    if path.suffix == ".safetensors":
        return Checkpoint(_read_safetensors(path), [f"read {path.name} with safetensors"])
    loaded = _torch_load(path)
    checkpoint = _unwrap(loaded, path, use_ema=use_ema)
    _strip_prefixes(checkpoint)
    return checkpoint


def match_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], *, spec: ModelSpec,
                     weights_path: Path) -> LoadPlan:
    """Compare checkpoint and model key by key; raise one WeightsError listing every missing,
    unexpected, mis-shaped and wrongly typed key that the spec does not let through."""
    expected = model.state_dict()
    covered_by_tie = _tied_aliases_present(model, state_dict)
    missing = sorted(set(expected) - set(state_dict) - covered_by_tie)
    unexpected = sorted(set(state_dict) - set(expected))
    let_through = tuple(k for k in missing if _matches(k, spec.checkpoint.allow_missing))
    ignored = tuple(k for k in unexpected if _matches(k, spec.checkpoint.ignore_unexpected))
    missing = [k for k in missing if k not in let_through]
    unexpected = [k for k in unexpected if k not in ignored]
    common = sorted(set(expected) & set(state_dict))
    shapes = [(k, f"checkpoint {list(state_dict[k].shape)} vs model {list(expected[k].shape)}")
              for k in common if state_dict[k].shape != expected[k].shape]
    dtypes = [(k, f"checkpoint {state_dict[k].dtype} vs model {expected[k].dtype}")
              for k in common if _dtype_kind(state_dict[k]) != _dtype_kind(expected[k])]
    if missing or unexpected or shapes or dtypes:
        raise WeightsError(_mismatch_report(spec, weights_path, missing, unexpected, shapes, dtypes))
    return LoadPlan(let_through, ignored)


def sha256_file(path: Path) -> str:
    """The file's sha256, read in large chunks (hashlib releases the GIL while hashing)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def blake3_file(path: Path) -> str:
    """The file's BLAKE3 digest: the load-time check, ~4x faster than sha256 here (SIMD, threads),
    which matters when every worker start hashes gigabytes."""
    from blake3 import blake3

    return blake3(max_threads=blake3.AUTO).update_mmap(str(path)).hexdigest()


def select_device(requested: str, gpu_id: int | str | None, *,
                  cuda_available: bool | None = None) -> torch.device:
    """The device to serve on: `cuda:<gpu_id>` when TorchServe assigned a GPU and CUDA works,
    else the CPU. Raises RuntimeError for `device: gpu` without a usable GPU."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    gpu_usable = cuda_available and gpu_id is not None
    if requested == "cpu":
        return torch.device("cpu")
    if gpu_usable:
        return torch.device(f"cuda:{int(gpu_id)}")
    if requested == "gpu":
        reason = "torch.cuda.is_available() is False" if not cuda_available else \
            "TorchServe assigned no GPU to this worker (number_of_gpu=0 or deviceType cpu)"
        # No "CUDA" in this text: TorchServe maps RuntimeErrors mentioning CUDA to "out of memory".
        raise RuntimeError(f"spec asks for serving.device: gpu but {reason}. Run on a GPU host "
                           "with a GPU build of torch, or set serving.device to auto or cpu.")
    return torch.device("cpu")


def model_dtype(spec: ModelSpec) -> torch.dtype:
    """The floating-point dtype the model runs in, from `serving.precision`."""
    return _PRECISION_DTYPES[spec.serving.precision]


def input_dtype(spec: ModelSpec) -> torch.dtype:
    """The dtype requests are decoded to: floating inputs follow the model's precision."""
    declared = getattr(torch, spec.input.dtype)
    return model_dtype(spec) if declared.is_floating_point else declared


def example_input(spec: ModelSpec, batch_size: int, *, device: torch.device) -> Tensor:
    """A seeded input batch of the spec's shape and dtype, for validation and warm-up."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, *spec.input.shape)
    dtype = input_dtype(spec)
    if dtype.is_floating_point:
        sample = torch.rand(shape, generator=generator, dtype=torch.float32).to(dtype)
    else:
        sample = torch.randint(0, 2, shape, generator=generator, dtype=dtype)
    return sample.to(device)


# ---- reading ----

def _torch_load(path: Path) -> object:
    with open(path, "rb") as file:
        head = file.read(4)
    zip_format = head.startswith(b"PK")
    if not (zip_format or head.startswith(b"\x80")):  # torch.save writes a zip (a pickle before 1.6)
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint (it starts with {head!r}). "
                           "Point `weights` at a file written by torch.save(model.state_dict()).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zip_format)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path} holds pickled Python objects, not only tensors, so it was refused without "
            f"running it (torch.load weights_only=True: {str(err).splitlines()[0]}). A pickled "
            "model can execute arbitrary code when loaded. In the training code save "
            "`torch.save(model.state_dict(), path)` instead; for an old `torch.save(model)` file "
            "you trust, run `mar convert-legacy` once."
        ) from None
    except (RuntimeError, OSError, EOFError) as err:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({err}). "
                           "Point `weights` at a file written by torch.save(state_dict).") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file ({err}). Write it with "
                           "safetensors.torch.save_file(model.state_dict(), path).") from None


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())


def _unwrap(loaded: object, path: Path, *, use_ema: bool) -> Checkpoint:
    """The state_dict inside a checkpoint: the object itself or one of the usual wrapper keys."""
    found = ", ".join(sorted(map(str, loaded))) if isinstance(loaded, Mapping) else type(loaded).__name__
    candidates = _EMA_KEYS if use_ema else _WRAPPER_KEYS
    if not use_ema and _is_state_dict(loaded):
        return Checkpoint(dict(loaded))
    if isinstance(loaded, Mapping):
        for key in candidates:
            if _is_state_dict(loaded.get(key)):
                ignored = sorted(str(k) for k in loaded if k != key)
                note = f"took the state_dict under `{key}`" + (
                    f" (ignored: {', '.join(ignored)})" if ignored else "")
                return Checkpoint(dict(loaded[key]), [note])
    if use_ema:
        raise WeightsError(f"{path} holds no EMA weights (found: {found}); `checkpoint.use_ema` "
                           f"looks under {', '.join(_EMA_KEYS)}. Set use_ema: false, or save the "
                           "EMA model's state_dict under one of those keys.")
    raise WeightsError(
        f"{path} holds no state_dict (found: {found}). Expected a mapping of parameter names to "
        f"tensors, directly or under one of {', '.join(_WRAPPER_KEYS)}. "
        "Save it with torch.save(model.state_dict(), path).")


def _strip_prefixes(checkpoint: Checkpoint) -> None:
    """Remove wrapper prefixes shared by every key, in any order and nesting."""
    state_dict = checkpoint.state_dict
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if state_dict and all(key.startswith(prefix) for key in state_dict):
                consume_prefix_in_state_dict_if_present(state_dict, prefix)
                checkpoint.notes.append(f"stripped prefix `{prefix}` from {len(state_dict)} keys")
                stripped = True


# ---- constructing and loading ----

def _construct(spec: ModelSpec, *, parameters_on_meta: bool) -> nn.Module:
    if not parameters_on_meta:
        return create_model(spec.arch, **spec.params)
    with _parameters_on_meta():
        return create_model(spec.arch, **spec.params)


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
    groups = _tie_groups(model)
    kept = {k: v for k, v in state_dict.items() if k not in plan.ignored_unexpected}
    complete = set(kept) == set(model.state_dict())
    # strict=True whenever the checkpoint names every key; match_state_dict already proved the rest.
    model.load_state_dict(kept, strict=complete, assign=assign)
    _retie(model, groups, kept)


def _tie_groups(model: nn.Module) -> list[list[str]]:
    """Names sharing one Parameter object (tied weights), in registration order."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _tied_aliases_present(model: nn.Module, state_dict: Mapping[str, Tensor]) -> set[str]:
    """Keys of tied parameters that the checkpoint may omit because a tie partner is present
    (safetensors, for one, stores shared tensors once)."""
    covered: set[str] = set()
    for group in _tie_groups(model):
        if any(name in state_dict for name in group):
            covered.update(name for name in group if name not in state_dict)
    return covered


def _retie(model: nn.Module, groups: list[list[str]], state_dict: Mapping[str, Tensor]) -> None:
    """Point every name of a tie group at one Parameter again (assign=True gave each its own)."""
    for group in groups:
        source = next((name for name in group if name in state_dict), group[0])
        shared = model.get_parameter(source)
        for name in group:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._parameters[leaf] = shared


# ---- the mismatch report ----

def _dtype_kind(tensor: Tensor) -> str:
    if tensor.dtype.is_floating_point:
        return "float"  # float widths differ freely: the load casts them
    return "complex" if tensor.dtype.is_complex else "integer/bool"


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _mismatch_report(spec: ModelSpec, weights_path: Path, missing, unexpected, shapes,
                     dtypes) -> str:
    sections = [
        ("missing from the checkpoint", _fold(missing)),
        ("unexpected in the checkpoint", _fold(unexpected)),
        ("shape differs", _fold_details(shapes)),
        ("dtype differs", _fold_details(dtypes)),
    ]
    counts = {"missing from the checkpoint": len(missing), "unexpected in the checkpoint":
              len(unexpected), "shape differs": len(shapes), "dtype differs": len(dtypes)}
    lines = [f"  {title} ({counts[title]}):\n" + "\n".join(f"    {row}" for row in rows)
             for title, rows in sections if rows]
    return (
        f"weights {weights_path} do not fit arch {spec.arch!r} with params {spec.params} "
        f"(spec {spec.source}):\n" + "\n".join(lines) + "\n"
        "Likely fix: the spec's `params` differ from training (shapes), `arch` names another "
        "architecture (missing and unexpected keys), or the checkpoint is not this model's. "
        "For a deliberate partial load, list key patterns under checkpoint.allow_missing or "
        "checkpoint.ignore_unexpected in the spec."
    )


_NUMBER = re.compile(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)")


def _fold(keys: list[str]) -> list[str]:
    """Fold runs of numbered layers: blocks.0.w ... blocks.11.w -> blocks.{0..11}.w (12 keys)."""
    return [row for row, _ in _fold_rows([(key, "") for key in keys])]


def _fold_details(rows: list[tuple[str, str]]) -> list[str]:
    return [f"{key}: {detail}" for key, detail in _fold_rows(rows)]


def _fold_rows(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    groups: dict[tuple[str, str], list[int]] = {}
    singles: list[tuple[str, str]] = []
    for key, detail in rows:
        numbers = _NUMBER.findall(key)
        if not numbers:
            singles.append((key, detail))
            continue
        # Fold on the last number in the key (the innermost layer index).
        match = list(_NUMBER.finditer(key))[-1]
        pattern = key[:match.start()] + "{}" + key[match.end():]
        groups.setdefault((pattern, detail), []).append(int(match.group()))
    folded = list(singles)
    for (pattern, detail), numbers in groups.items():
        numbers.sort()
        if len(numbers) < 3:
            folded += [(pattern.format(n), detail) for n in numbers]
        else:
            label = f"{{{numbers[0]}..{numbers[-1]}}}" if numbers == list(
                range(numbers[0], numbers[-1] + 1)) else "{" + ",".join(map(str, numbers)) + "}"
            folded.append((pattern.format(label) + f" ({len(numbers)} keys)", detail))
    return sorted(folded)
