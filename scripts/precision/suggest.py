"""`mar build SPEC --suggest`: the precisions and runtimes this host runs, each built as `mar build`
builds it (its accuracy gate included) and timed as a worker runs it (a fresh process, the
archive's own code, the spec's threads, its largest golden batch); the fastest that passes its
gate, with the spec lines that choose it."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from handlers.errors import MarError
from handlers.precision import PRECISIONS, runs_natively
from handlers.spec import load_spec
from scripts.build import build_archive
from scripts.verify import env_without_repository

__all__ = ["suggest", "spec_lines", "precision_value", "sample_settings", "Candidate",
           "CANDIDATES"]

# (runtime, precision): what is tried, in this order; the table of runtimes refuses the rest
CANDIDATES = [("eager", "fp32"), ("onnx", "fp32"), ("aoti", "fp32"), ("eager", "bf16"),
              ("aoti", "bf16"), ("torchscript", "bf16"), ("eager", "int8"), ("onnx", "int8"),
              ("aoti", "int8")]

_TIMING = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from handlers.records import GoldenRecord
from handlers.startup import load_archive_model
folder, seconds = Path(sys.argv[1]), float(sys.argv[2])
loaded = load_archive_model(folder, device=torch.device("cpu"))  # its threads, its golden check
inputs = GoldenRecord.read(folder).largest_inputs
samples = len(next(iter(inputs.values())))
loaded.model_io(inputs)
started, runs = time.perf_counter(), 0
while time.perf_counter() - started < seconds or runs < 3:
    loaded.model_io(inputs)
    runs += 1
ms = (time.perf_counter() - started) / runs * 1000
print(json.dumps({"ms_per_batch": ms, "samples_per_s": samples / ms * 1000, "batch": samples}))
"""


@dataclass
class Candidate:
    runtime: str
    precision: str
    outcome: str  # "ok", or why it was not built or timed
    build_s: float = 0.0
    ms_per_batch: float = 0.0
    samples_per_s: float = 0.0
    gate: str = ""

    @property
    def label(self) -> str:
        return f"{self.precision} {self.runtime}"


def suggest(spec_path: Path, *, seconds: float = 3.0,
            candidates: list[tuple[str, str]] = CANDIDATES) -> list[Candidate]:
    """Each of `candidates` (runtime, precision) this host runs, built and timed; those that
    passed, fastest first, then those that did not, with the reason."""
    load_spec(spec_path)  # a spec with a problem says so before anything is built
    raw = yaml.safe_load(spec_path.read_text())
    samples = sample_settings(raw)
    tried = []
    with tempfile.TemporaryDirectory(prefix="mar-suggest-") as scratch:
        for runtime, precision in candidates:
            if not runs_natively(precision):
                units = PRECISIONS[precision].cpu_units
                tried.append(Candidate(runtime, precision, f"not here: this CPU has none of "
                                                         f"{', '.join(units)}"))
                continue
            tried.append(_try(spec_path, raw, samples, runtime, precision, Path(scratch), seconds))
    return sorted(tried, key=lambda c: (c.outcome != "ok", -c.samples_per_s))


def _try(spec_path: Path, raw: dict, samples: dict, runtime: str, precision: str, scratch: Path,
         seconds: float) -> Candidate:
    import time

    serving = {**raw.get("serving", {}), "runtime": runtime,
               "precision": precision_value(runtime, precision, samples), "compile": False}
    variant = spec_path.parent / f".suggest-{runtime}-{precision}.yaml"
    variant.write_text(yaml.safe_dump({**raw, "serving": serving}))
    started = time.perf_counter()
    try:
        result = build_archive(variant, export_path=scratch / f"{runtime}-{precision}",
                               archive_format="folder")
    except MarError as err:
        return Candidate(runtime, precision, str(err).split(": ", 1)[-1][:200])
    finally:
        variant.unlink()
    built_s = time.perf_counter() - started
    timing = subprocess.run([sys.executable, "-c", _TIMING, str(result.archive), str(seconds)],
                            capture_output=True, text=True, env=env_without_repository(),
                            cwd=result.archive, timeout=900)
    if timing.returncode != 0:
        return Candidate(runtime, precision, "failed when run: " +
                         " ".join(timing.stderr.strip().splitlines()[-2:])[:200], built_s)
    figures = json.loads(timing.stdout.strip().splitlines()[-1])
    gate = ", ".join(f"{k} {v:.4g}" for k, v in result.gate.figures.items()) if result.gate \
        else "fp32 (the reference)"
    return Candidate(runtime, precision, "ok", built_s, figures["ms_per_batch"],
                     figures["samples_per_s"], gate)


def sample_settings(raw: dict) -> dict:
    """The spec's calibration, evaluation and accept settings, which every candidate keeps."""
    settings = raw.get("serving", {}).get("precision")
    return {k: v for k, v in settings.items() if k in ("calibration", "evaluation", "accept")} \
        if isinstance(settings, dict) else {}


def precision_value(runtime: str, precision: str, samples: dict) -> str | dict:
    """`serving.precision` for `precision` on `runtime`, keeping the spec's sample sets: the
    calibration set calibrates static int8 (every runtime but eager) and, without an evaluation
    set, is what the other precisions' gates are measured on."""
    static_int8 = precision == "int8" and runtime != "eager"
    value: dict = {"dtype": precision}
    if static_int8 and "calibration" in samples:
        value["calibration"] = samples["calibration"]
    evaluation = samples.get("evaluation") or (None if static_int8 else samples.get("calibration"))
    if precision != "fp32":
        value.update({k: v for k, v in (("evaluation", evaluation),
                                        ("accept", samples.get("accept"))) if v})
    return precision if len(value) == 1 else value


def spec_lines(candidate: Candidate, samples: dict) -> str:
    """What to write in the spec's `serving` section to serve `candidate`."""
    value = precision_value(candidate.runtime, candidate.precision, samples)
    return yaml.safe_dump({"serving": {"runtime": candidate.runtime, "precision": value}},
                          sort_keys=False, default_flow_style=None).strip()
