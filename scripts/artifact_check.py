"""An exported artifact run as a worker runs it, and proven equal to eager (scripts/export.py
builds it).

Every golden case, and each case's first sample alone (batch 1), goes through the artifact loaded
back exactly as a worker loads it; it must match eager within the precision's tolerance and answer
as many rows as it was given. AOTInductor's native code runs in a child process with the
artifact's own input check on, so an artifact that crashes, hangs or fixed a dimension fails the
build with the reason instead of taking `mar build` down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor

from handlers.errors import ExportError, MarError
from handlers.model_io import ModelIO
from handlers.records import GoldenRecord
from handlers.runtimes import Runtime, load_exported, runtime_named
from handlers.spec import ModelSpec, spec_to_dict

__all__ = ["artifact_outputs", "check_against_eager", "row_mismatch", "first_sample", "refusal"]


def artifact_outputs(spec: ModelSpec, path: Path, device: torch.device,
                     batches: list[dict]) -> list[dict]:
    """The artifact's outputs for each batch of named inputs, run as a worker runs it (in a child
    process for native code)."""
    runtime = runtime_named(spec.serving.runtime)
    return _artifact_outputs(spec, runtime, path, device, [[(b, None) for b in batches]])[0]


def _check_rows(spec: ModelSpec, batches: list[dict], outputs: list[dict]) -> None:
    """Every output of the artifact holds as many samples as its batch: else the runtime is
    refused."""
    for batch, answer in zip(batches, outputs):
        mismatch = row_mismatch(batch, answer)
        if mismatch:
            raise _fixed_batch(spec, *mismatch)


def row_mismatch(batch: dict, answer: dict) -> tuple[int, int, str] | None:
    """(samples given, rows answered, output) for the first output whose row count is not the
    batch's. torch 2.13's AOTInductor compiles conv -> flatten -> linear (the digits CNN) for the
    example's batch alone: it answers any batch with that many rows, past the input's end."""
    given = len(next(iter(batch.values())))
    return next(((given, len(value), name) for name, value in answer.items()
                 if len(value) != given), None)


def _fixed_batch(spec: ModelSpec, given: int, rows: int, name: str) -> ExportError:
    return ExportError(f"{spec.source}: the {spec.serving.runtime} artifact answers a batch of "
                       f"{given} with {rows} rows of `{name}`: it fixed the batch size it was "
                       "compiled at. Nothing was written. Serve it with another runtime (onnx), "
                       "or eager.")


def check_against_eager(spec: ModelSpec, runtime: Runtime, path: Path, device: torch.device,
                         golden: GoldenRecord, eager: ModelIO) -> float:
    """The artifact, loaded as a worker loads it, against eager: every golden case, and each
    case's first sample alone."""
    single = GoldenRecord([({k: first_sample(v) for k, v in inputs.items()},
                            eager({k: first_sample(v) for k, v in inputs.items()}))
                           for inputs, _ in golden.cases], golden.rtol, golden.atol)
    records = (golden, single)
    outputs = _artifact_outputs(spec, runtime, path, device, [r.cases for r in records])
    errors, worst = {}, 0.0
    for record, got in zip(records, outputs):
        result = record.compare(got)
        worst = max(worst, result.max_error)
        if not result.within:
            errors.update({k: max(v, errors.get(k, 0.0)) for k, v in result.errors.items()})
    if errors:
        rtol, atol = golden.rtol, golden.atol
        per_output = ", ".join(f"{name} {error:.3g}" if error != float("inf") else
                               f"{name}: another shape (the artifact fixed a dimension the spec "
                               "lets vary)" for name, error in errors.items())
        raise ExportError(f"{spec.source}: the {spec.serving.runtime} artifact differs from eager "
                       f"beyond the {spec.serving.precision} tolerance (rtol {rtol:g}, atol "
                       f"{atol:g}): max abs error per output: {per_output}. Nothing was written. "
                       "Serve it with serving.runtime: eager, or another runtime.")
    return worst


def _artifact_outputs(spec: ModelSpec, runtime: Runtime, path: Path, device: torch.device,
                      case_lists: list[list]) -> list[list[dict[str, Tensor]]]:
    """The artifact's outputs for each list of golden cases. AOTInductor's native code runs in a
    child process, so an artifact that crashes (it does: a channels-last CNN here) fails the
    build with the reason instead of taking `mar build` down."""
    inputs = [[{k: _moved(v, device) for k, v in case.items()} for case, _ in cases]
              for cases in case_lists]
    if not runtime.checked_in_child:
        exported = load_exported(spec, path, device, target_device=device.type)
        try:
            outputs = [[exported(case) for case in cases] for cases in inputs]
        except Exception as err:  # noqa: BLE001 - fails on an input the spec allows
            raise refusal(spec, "the exported artifact fails on an input the spec allows (a "
                                 "golden case at another batch size or length)", err) from err
        for cases, answers in zip(inputs, outputs):
            _check_rows(spec, cases, answers)
        return outputs
    exchange = path.parent / "check.pt"
    torch.save({"spec": spec_to_dict(spec), "inputs": inputs, "device": str(device)}, exchange)
    child = _run_child(spec, runtime, path, exchange, check_inputs=True)
    if child.returncode == _FAILED_EXIT and _SIZE_ONE_ASSUMED in child.stdout:
        # AOTInductor's input check assumes every dynamic dimension is at least 2 (torch.export's
        # 0/1 specialization), yet its code computes size 1 correctly: run unchecked, and the
        # comparison with eager that follows judges it.
        child = _run_child(spec, runtime, path, exchange, check_inputs=False)
    if child.returncode == _ROWS_EXIT:
        given, rows, name = json.loads(child.stdout.strip().splitlines()[-1])
        raise _fixed_batch(spec, given, rows, name)
    if child.returncode == _FAILED_EXIT:
        given, error = json.loads(child.stdout.strip().splitlines()[-1])
        raise refusal(spec, f"the exported artifact fails on a batch of {given}, which the spec "
                             "allows", error)
    if child.returncode != 0:
        crash = f"signal {-child.returncode}" if child.returncode < 0 else f"exit {child.returncode}"
        detail = " ".join(child.stderr.strip().splitlines()[-3:])[:400]
        raise ExportError(f"{spec.source}: the {runtime.name} artifact crashed when run ({crash}{': ' + detail if detail else ''}). "
                       "Nothing was written. Serve it with serving.runtime: eager, onnx or "
                       "torchscript.")
    outputs = torch.load(exchange, weights_only=True)
    exchange.unlink()
    return outputs


def _run_child(spec: ModelSpec, runtime: Runtime, path: Path, exchange: Path, *,
               check_inputs: bool) -> subprocess.CompletedProcess:
    """The artifact on the golden cases in a child process. `check_inputs`: AOTInductor's
    artifact checks each input's sizes against those it was compiled for and raises; unchecked,
    an artifact that fixed a dimension reads and writes past its buffers for any other size
    (torch 2.13 fixes the digits CNN's batch: the heap corrupted, the child hung)."""
    env = {**os.environ, "AOTI_RUNTIME_CHECK_INPUTS": "1" if check_inputs else "0"}
    try:
        return subprocess.run([sys.executable, "-c", _CHILD, str(path), str(exchange)],
                              capture_output=True, text=True, timeout=_CHILD_SECONDS, env=env)
    except subprocess.TimeoutExpired as err:
        raise ExportError(f"{spec.source}: the {runtime.name} artifact did not answer its golden "
                          f"cases within {_CHILD_SECONDS} s. Nothing was written. Serve it with "
                          "serving.runtime: eager, onnx or torchscript.") from err


# Loading and running its golden cases takes seconds; past this the artifact is hung.
_CHILD_SECONDS = 600
_SIZE_ONE_ASSUMED = "expected it to be >= 2, but got: 1"
_ROWS_EXIT = 3  # the child's exit status for an answer with the wrong number of rows
_FAILED_EXIT = 4  # for an input the artifact raised on

# An artifact answering the wrong number of rows has read and written past its buffers: the child
# exits at once, before a corrupted heap crashes it or hangs its OpenMP threads.
_CHILD = f"""
import json, os, sys, torch
from pathlib import Path
from handlers.runtimes import load_exported
from handlers.spec import parse_spec
from scripts.artifact_check import row_mismatch
path, exchange = Path(sys.argv[1]), sys.argv[2]
data = torch.load(exchange, weights_only=True)
device = torch.device(data["device"])
exported = load_exported(parse_spec(data["spec"]), path, device, target_device=device.type)
cpu = lambda v: [t.cpu() for t in v] if isinstance(v, list) else v.cpu()
def answer(case):
    try:
        outputs = exported(case)
    except Exception as err:
        print(json.dumps([len(next(iter(case.values()))), f"{{type(err).__name__}}: {{err}}"]),
              flush=True)
        os._exit({_FAILED_EXIT})
    mismatch = row_mismatch(case, outputs)
    if mismatch:
        print(json.dumps(mismatch), flush=True)
        os._exit({_ROWS_EXIT})
    return {{k: cpu(v) for k, v in outputs.items()}}
torch.save([[answer(case) for case in cases] for cases in data["inputs"]], exchange)
"""


def first_sample(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """A case's first sample alone: a batch of one, or a list of one."""
    return [value[0].clone()] if isinstance(value, list) else value[:1].clone()


def _moved(value: Tensor | list[Tensor], device: torch.device) -> Tensor | list[Tensor]:
    return [t.to(device) for t in value] if isinstance(value, list) else value.to(device)


def refusal(spec: ModelSpec, what: str, err: Exception | str) -> MarError:
    """`err`: the exception, or its `Type: message` as a child process printed it."""
    described = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    reason = " ".join(described.split())[:600]
    return ExportError(f"{spec.source}: serving.runtime {spec.serving.runtime}: {what}: "
                       f"{reason}. Nothing was written. {_fallback(spec)}")


def _fallback(spec: ModelSpec) -> str:
    """The runtime to serve with instead (static int8 has no eager form: ONNX Runtime's is
    calibrated the same way)."""
    if spec.serving.precision == "int8" and spec.serving.precision_settings.mode == "static" \
            and spec.serving.runtime != "onnx":
        return "Serve it with serving.runtime: onnx, whose static int8 is calibrated the same way."
    return "Serve it with serving.runtime: eager, which runs the definition as written."
