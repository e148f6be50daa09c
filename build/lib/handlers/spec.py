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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from handlers.errors import SpecError
from handlers.io_spec import DTYPES, IO_KEYS, InputSpec, IOSpec, OutputSpec, io_to_dict, parse_io
from handlers.runtimes import RUNTIMES

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
    "DTYPES",
    "DEVICES",
    "PRECISIONS",
]

DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("fp32", "fp16", "bf16")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")  # what TorchServe accepts


@dataclass(frozen=True)
class ServingSpec:
    batch_size: int = 1  # TorchServe's dynamic batching: requests merged into one forward pass
    max_batch_delay_ms: int = 5  # how long TorchServe waits to fill a batch
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120  # also bounds the worker's start-up (loading the weights)
    device: str = "auto"  # auto: the GPU TorchServe assigns if CUDA works, else the CPU
    precision: str = "fp32"  # the model is cast at load; inputs follow
    cpu_threads: int = 1  # torch threads per worker, on a GPU too; scale with workers first
    device_ids: tuple[int, ...] | None = None  # GPUs this model's workers may use (deviceIds)
    tf32: bool = False  # allow TF32 matmuls at fp32 on Ampere+ GPUs (faster, ~1e-3 less exact)
    compile: bool = False  # torch.compile the model at load; falls back to eager, logged, on failure
    channels_last: bool = False  # 4-D weights in NHWC: faster convolutions (oneDNN, cuDNN)
    runtime: str = "eager"  # eager, or an artifact exported at build: torchscript, onnx, aoti

    # ---- the same settings in TorchServe's own forms ----

    def model_config(self) -> dict[str, Any]:
        """The archive's model-config.yaml. TorchServe takes responseTimeout and startupTimeout
        from here and ignores a register call's values."""
        config: dict[str, Any] = {
            "minWorkers": self.min_workers, "maxWorkers": self.max_workers,
            "batchSize": self.batch_size, "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s, "startupTimeout": self.response_timeout_s}
        if self.device != "auto":
            config["deviceType"] = self.device
        if self.device_ids is not None:
            config["deviceIds"] = list(self.device_ids)
        return config

    def snapshot_entry(self, mar_name: str, *, default: bool) -> dict[str, Any]:
        """One model version in TorchServe's `model_snapshot` (what it registers at start-up)."""
        return {"defaultVersion": default, "marName": mar_name, "minWorkers": self.min_workers,
                "maxWorkers": self.max_workers, "batchSize": self.batch_size,
                "maxBatchDelay": self.max_batch_delay_ms, "responseTimeout": self.response_timeout_s}

    def register_params(self, *, initial_workers: int | None = None) -> dict[str, Any]:
        """The management API's register query (POST /models) for these settings."""
        return {"initial_workers": max(self.min_workers, 1) if initial_workers is None
                else initial_workers, "batch_size": self.batch_size,
                "max_batch_delay": self.max_batch_delay_ms}

    def overridden(self, **changes: Any) -> "ServingSpec":
        """These settings with `changes` applied (None values ignored), the worker range checked
        as in a spec. Raises SpecError naming the command-line options."""
        updated = replace(self, **{key: value for key, value in changes.items() if value is not None})
        problems: list[str] = []
        check_worker_range(updated.min_workers, updated.max_workers, problems,
                           names=("min workers", "max workers (--max-workers)"))
        if problems:
            raise SpecError(problems[0] + ".")
        return updated


def check_worker_range(min_workers: int, max_workers: int, problems: list[str], *,
                       names: tuple[str, str] = ("min_workers", "max_workers")) -> None:
    """The one rule between worker counts, for specs, register overrides and `mar scale`;
    `names` are the two settings as the user wrote them."""
    if min_workers > max_workers:
        problems.append(f"{names[0]} ({min_workers}) exceeds {names[1]} ({max_workers}); raise "
                        f"{names[1]}")


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
    weights: str  # as written in the file; resolve with ModelSpec.weights_path()
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
        """Return the weights file: relative to the spec's folder first, then to `repo_root`.

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
            if candidate.is_file():
                return candidate.resolve()
        tried = ", ".join(str(c) for c in candidates)
        raise SpecError(
            f"{self.source}: weights {self.weights!r} not found (looked at {tried}). "
            "Train and save the state_dict there, fix the `weights` path, or pass --weights PATH."
        )


_REQUIRED = ("name", "version", "arch", "weights")
_OPTIONAL = ("params", "serving", "checkpoint", "files", "processor", *IO_KEYS)
_SERVING_KEYS = tuple(f.name for f in fields(ServingSpec))
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
    _check_keys(raw, _REQUIRED, _OPTIONAL, "", problems)
    name = _check_name(raw.get("name"), problems)
    version = _check_version(raw.get("version"), problems)
    arch = _check_string(raw, "arch", problems)
    weights = _check_string(raw, "weights", problems)
    params = _check_params(raw.get("params", {}), problems)
    io = parse_io(raw, problems)
    serving = _check_serving(raw.get("serving", {}), problems)
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
        "serving": {f.name: _plain(getattr(spec.serving, f.name)) for f in fields(ServingSpec)},
        "checkpoint": {f.name: _plain(getattr(spec.checkpoint, f.name))
                       for f in fields(CheckpointSpec)},
    }
    if spec.files:
        data["files"] = list(spec.files)
    if spec.processor:
        data["processor"] = spec.processor
    return data


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_keys(raw: dict, required, optional, prefix: str, problems: list[str]) -> None:
    for key in required:
        if key not in raw:
            problems.append(f"missing key `{prefix}{key}`: add it (required keys: "
                            f"{', '.join(prefix + k for k in required)})")
    allowed = set(required) | set(optional)
    for key in sorted(set(raw) - allowed, key=str):
        problems.append(f"unknown key `{prefix}{key}`: remove it or fix its spelling "
                        f"(allowed: {', '.join(prefix + k for k in (*required, *optional))})")


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


def _optional_section(value: Any, name: str, allowed: tuple[str, ...],
                      problems: list[str]) -> dict | None:
    """An optional mapping section with its keys checked: {} when absent, None when not a mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"`{name}` must be a mapping, got {value!r}")
        return None
    _check_keys(value, (), allowed, f"{name}.", problems)
    return value


def _check_bool(settings: dict, key: str, prefix: str, problems: list[str]) -> None:
    """Drop (and report) a setting that should be true or false but is not."""
    if key in settings and not isinstance(settings[key], bool):
        problems.append(f"`{prefix}.{key}` {settings.pop(key)!r} must be true or false")


def _check_serving(value: Any, problems: list[str]) -> ServingSpec:
    section = _optional_section(value, "serving", _SERVING_KEYS, problems)
    if section is None:
        return ServingSpec()
    settings = {k: v for k, v in section.items() if k in _SERVING_KEYS}
    for key in ("batch_size", "min_workers", "max_workers", "response_timeout_s", "cpu_threads"):
        _check_int(settings, key, minimum=1 if key != "min_workers" else 0, problems=problems)
    _check_int(settings, "max_batch_delay_ms", minimum=0, problems=problems)
    for key in ("tf32", "compile", "channels_last"):
        _check_bool(settings, key, "serving", problems)
    if settings.get("device_ids") is not None:
        ids = settings["device_ids"]
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool)
                                                      and i >= 0 for i in ids)):
            problems.append(f"`serving.device_ids` {ids!r} must be a list of GPU indices, e.g. [0, 1]")
            settings.pop("device_ids")
        else:
            settings["device_ids"] = tuple(ids)
    if settings.get("device", "auto") not in DEVICES:
        problems.append(f"`serving.device` {settings['device']!r} is not one of {', '.join(DEVICES)}")
    _check_runtime(settings, problems)
    if settings.get("precision", "fp32") not in PRECISIONS:
        problems.append(f"`serving.precision` {settings['precision']!r} is not one of "
                        f"{', '.join(PRECISIONS)}")
    serving = ServingSpec(**settings)
    check_worker_range(serving.min_workers, serving.max_workers, problems,
                       names=("`serving.min_workers`", "`serving.max_workers`"))
    return serving


def _check_runtime(settings: dict, problems: list[str]) -> None:
    name = settings.get("runtime", "eager")
    runtime = RUNTIMES.get(name)
    if runtime is None:
        problems.append(f"`serving.runtime` {name!r} is not one of {', '.join(RUNTIMES)}")
    elif runtime.exported and settings.get("compile"):
        problems.append(f"`serving.compile` applies to the eager runtime; runtime {name} is "
                        "compiled at build already: drop compile, or use runtime: eager")
    elif settings.get("precision", "fp32") in runtime.refused_precisions:
        precision = settings["precision"]
        problems.append(f"`serving.runtime` {name} with precision {precision} is not supported "
                        f"({runtime.refused_precisions[precision]}): use another precision, or "
                        "another runtime")


def _check_int(settings: dict, key: str, *, minimum: int, problems: list[str]) -> None:
    if key not in settings:
        return
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"`serving.{key}` {value!r} must be an integer >= {minimum}")
        settings.pop(key)


def _check_checkpoint(value: Any, problems: list[str]) -> CheckpointSpec:
    section = _optional_section(value, "checkpoint", _CHECKPOINT_KEYS, problems)
    if section is None:
        return CheckpointSpec()
    settings = {k: v for k, v in section.items() if k in _CHECKPOINT_KEYS}
    _check_bool(settings, "use_ema", "checkpoint", problems)
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
