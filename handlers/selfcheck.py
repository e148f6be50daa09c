"""`mar verify`'s fresh process: an extracted archive checks itself, with its own files only.

    python -c "import sys; sys.path.insert(0, DIR); from handlers.selfcheck import main; main([DIR])"

It runs the worker's start-up (build record, weights, golden check) on whatever device this host
has, then checks the weights' sha256 too. Exit status 0 or 1, with one line saying why.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from handlers.errors import MarError
from handlers.records import BuildRecord, GoldenRecord
from handlers.startup import load_archive_model

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    model_dir = Path((argv or sys.argv[1:])[0]).resolve()
    import model_defs  # noqa: PLC0415 - must come from the archive, checked here

    if not Path(model_defs.__file__).resolve().is_relative_to(model_dir):
        print(f"verify: model_defs was imported from {model_defs.__file__}, not from the archive "
              f"{model_dir}; put the archive first on sys.path.", file=sys.stderr)
        return 1
    try:
        # Offline, check on whatever this host has: the archive, not the serving device, is tested.
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        checked = load_archive_model(model_dir, device=device)
        BuildRecord.read(model_dir).check_weights_sha256(model_dir)
    except MarError as err:
        print(f"verify: FAILED: {err}", file=sys.stderr)
        return 1
    precision = checked.spec.serving.precision
    rtol, atol = GoldenRecord.tolerance(precision)
    print(f"verify: OK: {checked.spec.name} {checked.spec.version}: build record matches; golden "
          f"max abs error {checked.golden_max_error:.3g} on {checked.device} "
          f"(tolerance rtol {rtol:g}, atol {atol:g}, {precision})")
    gate = (BuildRecord.read(model_dir).precision or {}).get("gate")
    if gate:
        figures = ", ".join(f"{k} {v:.4g}" for k, v in gate["figures"].items())
        print(f"verify: accuracy at build: {precision} vs fp32 eager on {gate['samples']} samples "
              f"({gate['source']}): {figures}")
    return 0
