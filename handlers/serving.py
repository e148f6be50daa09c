"""The spec's `serving` section: how TorchServe serves the model (batching, workers, device,
precision, runtime), and the same settings in TorchServe's own forms (model-config.yaml, a snapshot
entry, the register query), each produced here only.

    serving: {batch_size: 8, max_batch_delay_ms: 5, min_workers: 1, max_workers: 1,
              response_timeout_s: 120, device: auto, precision: fp32, runtime: eager}
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from handlers.errors import SpecError
from handlers.precision import PRECISIONS, PrecisionSettings, parse_precision, precision_key
from handlers.runtimes import RUNTIMES
from handlers.validation import check_bool, optional_section

__all__ = ["ServingSpec", "parse_serving", "check_worker_range", "DEVICES", "PRECISIONS"]

DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class ServingSpec:
    batch_size: int = 1  # TorchServe's dynamic batching: requests merged into one forward pass
    max_batch_delay_ms: int = 5  # how long TorchServe waits to fill a batch
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120  # also bounds the worker's start-up (loading the weights)
    device: str = "auto"  # auto: the GPU TorchServe assigns if CUDA works, else the CPU
    precision: str = "fp32"  # handlers/precision.py: fp32, fp16, bf16 (cast at load), int8
    precision_settings: PrecisionSettings = field(default_factory=PrecisionSettings)
    cpu_threads: int = 1  # torch threads per worker, on a GPU too; scale with workers first
    device_ids: tuple[int, ...] | None = None  # GPUs this model's workers may use (deviceIds)
    tf32: bool = False  # allow TF32 matmuls at fp32 on Ampere+ GPUs (faster, ~1e-3 less exact)
    compile: bool = False  # torch.compile the model at load; falls back to eager, logged, on failure
    channels_last: bool = False  # 4-D weights in NHWC: faster convolutions (oneDNN, cuDNN)
    runtime: str = "eager"  # eager, or an artifact exported at build: torchscript, onnx, aoti

    def to_dict(self) -> dict[str, Any]:
        """The section as YAML-ready data (the archive's spec.yaml)."""
        data = {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self) if f.name != "precision_settings"}
        settings = self.precision_settings.to_dict()
        if settings:
            data["precision"] = {"dtype": self.precision, **settings}
        return data

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


_KEYS = tuple(f.name for f in fields(ServingSpec) if f.name != "precision_settings")


def check_worker_range(min_workers: int, max_workers: int, problems: list[str], *,
                       names: tuple[str, str] = ("min_workers", "max_workers")) -> None:
    """The one rule between worker counts, for specs, register overrides and `mar scale`;
    `names` are the two settings as the user wrote them."""
    if min_workers > max_workers:
        problems.append(f"{names[0]} ({min_workers}) exceeds {names[1]} ({max_workers}); raise "
                        f"{names[1]}")


def parse_serving(value: Any, problems: list[str]) -> ServingSpec:
    """The spec's `serving` section; every problem appended to `problems`."""
    section = optional_section(value, "serving", _KEYS, problems)
    if section is None:
        return ServingSpec()
    settings = {k: v for k, v in section.items() if k in _KEYS}
    for key in ("batch_size", "min_workers", "max_workers", "response_timeout_s", "cpu_threads"):
        _check_int(settings, key, minimum=1 if key != "min_workers" else 0, problems=problems)
    _check_int(settings, "max_batch_delay_ms", minimum=0, problems=problems)
    for key in ("tf32", "compile", "channels_last"):
        check_bool(settings, key, "serving", problems)
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
    runtime = settings.get("runtime", "eager")
    settings["precision"], settings["precision_settings"] = parse_precision(
        settings.get("precision", "fp32"), runtime if runtime in RUNTIMES else "eager", problems)
    _check_runtime(settings, problems)
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
    elif (key := precision_key(settings["precision"], settings["precision_settings"])) in \
            runtime.refused_precisions:
        problems.append(f"`serving.runtime` {name} with precision {key} is not supported "
                        f"({runtime.refused_precisions[key]}): use another precision, or "
                        "another runtime")


def _check_int(settings: dict, key: str, *, minimum: int, problems: list[str]) -> None:
    if key not in settings:
        return
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"`serving.{key}` {value!r} must be an integer >= {minimum}")
        settings.pop(key)

