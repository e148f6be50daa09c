"""The model spec: one YAML file that says how to rebuild, load and serve a model.

A spec travels inside every archive, so this module is imported both by `mar build` (from the repo)
and by the TorchServe handler (from the extracted archive). It depends on PyYAML and the standard
library only.

Example (`model_defs/specs/digits_cnn.yaml`)::

    name: digits_cnn            # archive and TorchServe model name
    version: "1.0"
    arch: digits_cnn            # a name from model_defs.list_models()
    params: {channels: 16}      # keyword arguments for the architecture's constructor
    weights: ../../artifacts/digits_cnn.pt   # relative to this file, or to the repo root
    input: {shape: [1, 8, 8], dtype: float32} # one sample, without the batch dimension
    labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]   # inputs/outputs: handlers/io_spec.py
    files: [vocab.txt]          # optional: more files the model needs, packaged and hashed
    processor: my_processor     # optional: pre/post-processing registered in model_defs
    serving: {batch_size: 8, max_batch_delay_ms: 5, min_workers: 1, max_workers: 1,
              response_timeout_s: 120, device: auto, precision: fp32}
    checkpoint: {key: model_state, strip_prefix: model., allow_missing: [], ignore_unexpected: []}   # optional
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from handlers.errors import SpecError
from handlers.io_spec import DTYPES, IO_KEYS, InputSpec, IOSpec, OutputSpec, io_to_dict, parse_io
from handlers.serving import DEVICES, PRECISIONS, ServingSpec, check_worker_range, parse_serving
from handlers.validation import check_bool, check_keys, optional_section

__all__ = [
    "SpecError",
    "InputSpec",
    "OutputSpec",
    "IOSpec",
    "ServingSpec",
    "CheckpointSpec",
    "ModelSpec",
    "load_spec",
    "parse_spec",
    "spec_to_dict",
    "check_worker_range",
    "version_key",
    "DTYPES",
    "DEVICES",
    "PRECISIONS",
]

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")  # what TorchServe accepts


@dataclass(frozen=True)
class CheckpointSpec:
    key: str | None = None  # dotted path to the state_dict inside the checkpoint, e.g. model_state
    use_ema: bool = False  # load the EMA weights (`state_dict_ema` or `model_ema`) of the checkpoint
    strip_prefix: str | None = None  # keep only keys under this prefix, without it ("model.")
    add_prefix: str | None = None  # put this prefix before every key ("backbone.")
    allow_missing: tuple[str, ...] = ()  # glob patterns of model keys the checkpoint may lack
    ignore_unexpected: tuple[str, ...] = ()  # glob patterns of checkpoint keys the model lacks


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    arch: str
    weights: str  # a checkpoint, a shard index or a folder; resolve with ModelSpec.weights_path()
    io: IOSpec  # inputs, outputs, mask, tokenizer, labels (handlers/io_spec.py)
    params: dict[str, Any] = field(default_factory=dict)
    serving: ServingSpec = field(default_factory=ServingSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    files: tuple[str, ...] = ()  # more files the model needs, relative to the spec; packaged
    processor: str | None = None  # pre/post-processing registered in model_defs (register_processor)
    source: Path | None = None  # the file this spec was read from

    @property
    def inputs(self) -> tuple[InputSpec, ...]:
        return self.io.inputs

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        return self.io.outputs

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.io.labels

    @property
    def input(self) -> InputSpec:
        """The one input of a one-input model."""
        if len(self.io.inputs) != 1:
            raise SpecError(f"{self.source}: this model has {len(self.io.inputs)} inputs; name one")
        return self.io.inputs[0]

    def weights_path(self, repo_root: Path | None = None) -> Path:
        """Return the weights (a file, or a folder holding a shard index): relative to the
        spec's folder first, then to `repo_root`.

        Raises SpecError naming every place that was tried when none holds the file.
        """
        written = Path(self.weights).expanduser()
        if written.is_absolute():
            candidates = [written]
        else:
            spec_dir = self.source.parent if self.source else Path.cwd()
            candidates = [spec_dir / written]
            if repo_root is not None:
                candidates.append(repo_root / written)
        for candidate in candidates:
            if candidate.exists():
                return candidate.resolve()
        tried = ", ".join(str(c) for c in candidates)
        raise SpecError(
            f"{self.source}: weights {self.weights!r} not found (looked at {tried}). "
            "Train and save the state_dict there, fix the `weights` path, or pass --weights PATH."
        )


_REQUIRED = ("name", "version", "arch", "weights")
_OPTIONAL = ("params", "serving", "checkpoint", "files", "processor", *IO_KEYS)
_CHECKPOINT_KEYS = tuple(f.name for f in fields(CheckpointSpec))


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a spec file. Raises SpecError listing every problem in the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file. Pass the path of a YAML spec, "
                        "for example model_defs/specs/digits_cnn.yaml.") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({err}). Fix the syntax and rebuild.") from None
    return parse_spec(raw, source=path)


def parse_spec(raw: Any, *, source: Path | None = None) -> ModelSpec:
    """Validate an already-parsed spec mapping. Raises SpecError listing every problem."""
    where = str(source) if source else "spec"
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a spec is a YAML mapping with keys {', '.join(_REQUIRED)}; "
                        f"got {type(raw).__name__}.")
    problems: list[str] = []
    check_keys(raw, _REQUIRED, _OPTIONAL, "", problems)
    name = _check_name(raw.get("name"), problems)
    version = _check_version(raw.get("version"), problems)
    arch = _check_string(raw, "arch", problems)
    weights = _check_string(raw, "weights", problems)
    params = _check_params(raw.get("params", {}), problems)
    io = parse_io(raw, problems)
    serving = parse_serving(raw.get("serving", {}), problems)
    checkpoint = _check_checkpoint(raw.get("checkpoint", {}), problems)
    files = _check_files(raw.get("files", []), problems)
    processor = _check_string(raw, "processor", problems) or None
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise SpecError(f"{where}: invalid spec\n{listing}\n"
                        "See README.md, section 'The spec', for every key with an example.")
    return ModelSpec(name=name, version=version, arch=arch, weights=weights, io=io, params=params,
                     serving=serving, checkpoint=checkpoint, files=files, processor=processor,
                     source=source)


def spec_to_dict(spec: ModelSpec, *, weights: str | None = None) -> dict[str, Any]:
    """The spec as plain YAML-ready data, optionally with `weights` replaced (for the archive)."""
    data: dict[str, Any] = {
        "name": spec.name,
        "version": spec.version,
        "arch": spec.arch,
        "params": dict(spec.params),
        "weights": weights if weights is not None else spec.weights,
        **io_to_dict(spec.io),
        "serving": spec.serving.to_dict(),
        "checkpoint": {f.name: _plain(getattr(spec.checkpoint, f.name))
                       for f in fields(CheckpointSpec)},
    }
    if spec.files:
        data["files"] = list(spec.files)
    if spec.processor:
        data["processor"] = spec.processor
    return data


def version_key(version: str) -> tuple:
    """A sort key that orders versions as people read them: 1.9 < 1.10, 2.0-rc < 2.0.1."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"[.\-_]", version))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_name(value: Any, problems: list[str]) -> str:
    if value is not None and not (isinstance(value, str) and _NAME_PATTERN.match(value)):
        problems.append(f"`name` {value!r} must start with a letter or digit and contain only "
                        "letters, digits, '_', '-' and '.' (TorchServe's rule), e.g. digits_cnn")
    return value if isinstance(value, str) else ""


def _check_version(value: Any, problems: list[str]) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.append(f"`version` {value!r} must be a string such as \"1.0\"")
        return ""
    text = str(value)
    if not _NAME_PATTERN.match(text):
        problems.append(f"`version` {text!r} may contain only letters, digits, '_', '-' and '.'")
    return text


def _check_string(raw: dict, key: str, problems: list[str]) -> str:
    value = raw.get(key)
    if value is not None and not (isinstance(value, str) and value.strip()):
        problems.append(f"`{key}` must be a non-empty string, got {value!r}")
    return value if isinstance(value, str) else ""


def _check_params(value: Any, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        problems.append(f"`params` must map constructor argument names to values, got {value!r}")
        return {}
    return dict(value)


def _check_files(value: Any, problems: list[str]) -> tuple[str, ...]:
    if not (isinstance(value, list) and all(isinstance(f, str) and f and not f.startswith("/")
                                            and ".." not in Path(f).parts for f in value)):
        problems.append(f"`files` must be a list of paths relative to the spec's folder, e.g. "
                        f"[vocab.txt], got {value!r}")
        return ()
    return tuple(value)


def _check_checkpoint(value: Any, problems: list[str]) -> CheckpointSpec:
    section = optional_section(value, "checkpoint", _CHECKPOINT_KEYS, problems)
    if section is None:
        return CheckpointSpec()
    settings = {k: v for k, v in section.items() if k in _CHECKPOINT_KEYS}
    check_bool(settings, "use_ema", "checkpoint", problems)
    for key in ("key", "strip_prefix", "add_prefix"):
        if settings.get(key) is not None and not (isinstance(settings[key], str) and settings[key]):
            problems.append(f"`checkpoint.{key}` {settings.pop(key)!r} must be a non-empty string"
                            + (', e.g. "model."' if key != "key" else ", e.g. model_state"))
    if settings.get("key") and settings.get("use_ema"):
        problems.append("`checkpoint.key` and `checkpoint.use_ema` both choose the state_dict; "
                        "keep one (key: model_ema does what use_ema does)")
    for key in ("allow_missing", "ignore_unexpected"):
        listed = settings.get(key, [])
        if not (isinstance(listed, list) and all(isinstance(p, str) and p for p in listed)):
            problems.append(f"`checkpoint.{key}` must be a list of key patterns such as "
                            f"'classifier.*', got {listed!r}")
            listed = []
        settings[key] = tuple(listed)
    return CheckpointSpec(**settings)
