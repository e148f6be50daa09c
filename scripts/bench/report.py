"""What every benchmark's report shares: the machine it ran on, and rows of variants as ratios to a
reference variant, per concurrency.
"""

from __future__ import annotations

import os
import platform
import time

import torch

__all__ = ['machine', 'print_comparison']


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def print_comparison(title: str, table: dict, reference: str, unit: str) -> None:
    """Rows of variants per concurrency, each as a ratio to the `reference` variant's rate."""
    print(f"\n{title}")
    for level, variants in table.items():
        base = variants[reference]["requests_per_s"]
        for name, row in variants.items():
            print(f"  c={level:<4} {name:<18} {row['requests_per_s']:8.0f} req/s  "
                  f"p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                  f"{row['requests_per_s'] / base:5.2f}x {unit}  failed {row['failed']}")
