"""Does a checkpoint fit a model? Key by key: missing, unexpected, mis-shaped and wrongly typed keys
in one report with the likely fix, and what the spec's `checkpoint` section lets through."""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from handlers.checkpoint import Checkpoint
from handlers.errors import WeightsError
from handlers.spec import ModelSpec

__all__ = ["LoadPlan", "match_state_dict", "align_prefix", "tie_groups"]


@dataclass(frozen=True)
class LoadPlan:
    let_through_missing: tuple[str, ...] = ()  # model keys left as constructed (allow_missing)
    ignored_unexpected: tuple[str, ...] = ()  # checkpoint keys dropped (ignore_unexpected)


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


def align_prefix(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Strip or add a key prefix when, and only when, it maps every key the model lacks onto
    every key it does not expect, one to one: a LightningModule's `model.` on every key, say.
    The checkpoint is renamed in place and the note says what was done; anything short of an
    exact, complete mapping is left for the mismatch report to name."""
    missing, unexpected = _differences(model, checkpoint.state_dict)
    fit = _prefix_fit(missing, unexpected)
    if fit is None or fit[2] != len(missing) or len(missing) != len(unexpected):
        return
    action, prefix, _ = fit
    state = checkpoint.state_dict
    if action == "strip":
        checkpoint.state_dict = {k[len(prefix):] if k in unexpected else k: v for k, v in state.items()}
        checkpoint.notes.append(f"stripped prefix `{prefix}` from {len(unexpected)} keys: each was "
                                f"`{prefix}` + a key the model needs and lacked")
    else:
        checkpoint.state_dict = {prefix + k if k in unexpected else k: v for k, v in state.items()}
        checkpoint.notes.append(f"added prefix `{prefix}` to {len(unexpected)} keys: the model "
                                f"holds each under `{prefix}` and lacked it")


def _differences(model: nn.Module, state_dict: Mapping[str, Tensor]) -> tuple[set[str], set[str]]:
    expected = set(model.state_dict())
    missing = expected - set(state_dict) - _tied_aliases_present(model, state_dict)
    return missing, set(state_dict) - expected


def _prefix_fit(missing: set[str], unexpected: set[str]) -> tuple[str, str, int] | None:
    """The prefix that maps the most keys between the two sides, as ("strip" or "add", prefix,
    how many keys it maps): strip when checkpoint keys are prefix + model keys, add when model keys
    are prefix + checkpoint keys."""
    counts: Counter = Counter()
    for action, longer, shorter in (("strip", unexpected, missing), ("add", missing, unexpected)):
        for key in longer:
            parts = key.split(".")
            for cut in range(1, len(parts)):
                prefix = ".".join(parts[:cut]) + "."
                if key[len(prefix):] in shorter:
                    counts[(action, prefix)] += 1
    if not counts:
        return None
    (action, prefix), mapped = counts.most_common(1)[0]
    return action, prefix, mapped


def tie_groups(model: nn.Module) -> list[list[str]]:
    """Names sharing one Parameter object (tied weights), in registration order."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _tied_aliases_present(model: nn.Module, state_dict: Mapping[str, Tensor]) -> set[str]:
    """Keys of tied parameters that the checkpoint may omit because a tie partner is present
    (safetensors, for one, stores shared tensors once)."""
    covered: set[str] = set()
    for group in tie_groups(model):
        if any(name in state_dict for name in group):
            covered.update(name for name in group if name not in state_dict)
    return covered


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
        + (_key_fix(missing, unexpected) if not (shapes or dtypes) else "") +
        "Likely fix: the spec's `params` differ from training (shapes), `arch` names another "
        "architecture (missing and unexpected keys), or the checkpoint is not this model's. "
        "For a deliberate partial load, list key patterns under checkpoint.allow_missing or "
        "checkpoint.ignore_unexpected in the spec."
    )


def _key_fix(missing: list[str], unexpected: list[str]) -> str:
    """The one spec line that would fix keys that differ only by a prefix or by extras."""
    fit = _prefix_fit(set(missing), set(unexpected))
    if fit is not None and fit[2] >= max(1, min(len(missing), len(unexpected)) // 2):
        action, prefix, mapped = fit
        if action == "strip":
            rest = len(unexpected) - mapped
            return (f"Prefix: {mapped} of the unexpected keys are `{prefix}` + a missing key. Add "
                    f'`checkpoint: {{strip_prefix: "{prefix}"}}` to the spec: it keeps the keys under '
                    f"`{prefix}` without it" + (f" and drops the {rest} others (listed at build)"
                                                if rest else "")
                    + (f"; {len(missing) - mapped} model keys would still be missing"
                       if mapped < len(missing) else "") + ".\n")
        rest = len(missing) - mapped
        return (f"Prefix: {mapped} of the missing keys are `{prefix}` + an unexpected key: the "
                f"checkpoint holds the model's `{prefix}` part. Add "
                f'`checkpoint: {{add_prefix: "{prefix}"}}` to the spec'
                + (f" (and list the {rest} other missing keys under checkpoint.allow_missing)"
                   if rest else "") + ".\n")
    if unexpected and not missing:
        return (f"Only extra keys: if the checkpoint holds training-only tensors, add "
                f"`checkpoint: {{ignore_unexpected: {_patterns(unexpected)}}}` to the spec.\n")
    if missing and not unexpected:
        return (f"Only missing keys: if the model may keep its constructed values for them, add "
                f"`checkpoint: {{allow_missing: {_patterns(missing)}}}` to the spec.\n")
    return ""


def _patterns(keys: list[str]) -> str:
    """Keys as a short YAML list: the keys themselves, or one `head.*` pattern per top module."""
    if len(keys) > 4:
        keys = sorted({k.split(".", 1)[0] + ".*" if "." in k else k for k in keys})
    return "[" + ", ".join(f'"{k}"' for k in keys) + "]"


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
