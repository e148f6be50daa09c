"""Where a batch's time goes in a worker under load: py-spy samples the worker process while a
load generator drives it, each sample is put in one stage by the frames on its stack, and the
handler's own counters (MarBatches, MarSamples) turn samples into milliseconds per batch.

    TorchServe protocol   reading the batch from the frontend, its Service wrapper, writing and
                          sending the responses (TorchServe's code, the same for any handler)
    decode                requests -> samples (ModelHandler._decoded: the short path or each alone)
    batch assembly        samples -> forward passes' tensors (ModelHandler.batch)
    forward               the model (ModelHandler.predict)
    split                 outputs -> each request's rows and predictions (ModelHandler.unbatch)
    encode                answers -> response bodies (ModelHandler.encode_response)
    metrics               the handler's counters (HandlerMetrics)

Only samples where the worker is on a CPU count (py-spy leaves idle ones out): the time it waits
for the frontend is no stage's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from scripts.client import TorchServeClient
from scripts.config import ServerConfig

__all__ = ["profile_worker", "STAGES", "classify", "print_profile"]

RATE_HZ = 250
# (stage, frames that put a sample in it), the first that matches a frame of its stack wins
STAGES = [("metrics", ("HandlerMetrics.",)),
          ("decode", ("ModelHandler._decoded",)),
          ("batch assembly", ("ModelHandler.batch ",)),
          ("forward", ("ModelHandler.predict ",)),
          ("split", ("ModelHandler.unbatch ",)),
          ("encode", ("ModelHandler.encode_response ",)),
          ("handler, other", ("ModelHandler.handle ",)),
          ("TorchServe protocol", ("(ts/",))]
OTHER = "other"
PRINT_ORDER = ["TorchServe protocol", "decode", "batch assembly", "forward", "split", "encode",
               "metrics", "handler, other", OTHER]


def profile_worker(config: ServerConfig, model: str, drive: Callable[[float], dict],
                   probe: Callable[[], object], *, seconds: float, folder: Path) -> dict:
    """`drive(seconds)` (a load run: its figures) while py-spy samples `model`'s worker; the
    run's figures plus the profile: {"batches", "mean_batch", "ms_per_batch": {stage: ms}}.
    `probe()` sends the model one request."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    client = TorchServeClient(config)
    pid = client.describe(model)[0]["workers"][0]["pid"]
    stacks = folder / f"{model}-stacks.txt"
    before = _counters(config, model)
    recorder = subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw",
                                 "--rate", str(RATE_HZ), "--duration", str(round(seconds)),
                                 "--nonblocking", "-o", str(stacks)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = drive(seconds)
    error = recorder.communicate(timeout=seconds + 60)[1]
    if recorder.returncode != 0 or not stacks.exists():
        return {**run, "skipped": f"py-spy could not sample the worker: {error.strip()[-300:]}"}
    batches, samples = _handled_since(config, model, before, run["completed"], probe)
    spent = classify(stacks.read_text())
    return {**run, "batches": batches, "mean_batch": samples / max(batches, 1),
            "ms_per_batch": {stage: count / RATE_HZ / max(batches, 1) * 1000
                             for stage, count in spent.items()}}


def classify(raw: str) -> Counter:
    """py-spy's raw output (`frame;frame;... count` per line) as samples per stage."""
    spent: Counter = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        spent[next((stage for stage, marks in STAGES if any(m in stack for m in marks)),
                   OTHER)] += int(count)
    return spent


def _counters(config: ServerConfig, model: str) -> tuple[float, float, float]:
    """The handler's MarBatches, MarSamples and MarRequests for `model` (TorchServe's Prometheus
    text on the metrics port)."""
    text = urllib.request.urlopen(f"{config.metrics_url}/metrics", timeout=10).read().decode()

    def total(name: str) -> float:
        return sum(float(value) for value in re.findall(
            rf'^{name}{{[^}}]*ModelName="{re.escape(model)}"[^}}]*}} ([0-9.e+]+)$', text, re.M))

    return total("MarBatches"), total("MarSamples"), total("MarRequests")


def _handled_since(config: ServerConfig, model: str, before: tuple, requests: int,
                   probe: Callable[[], object], limit_s: float = 30) -> tuple[float, float]:
    """Batches and samples handled since `before`, once the handler has handed over the counts
    of the run's `requests` (it does at most once a second, on a batch: one request at a time
    is sent until it has)."""
    deadline = time.monotonic() + limit_s
    while True:
        batches, samples, handled = (a - b for a, b in zip(_counters(config, model), before))
        if handled >= requests or time.monotonic() > deadline:
            return batches, samples
        probe()


def print_profile(title: str, profile: dict) -> None:
    if "skipped" in profile:
        print(f"\n{title}: skipped ({profile['skipped']})")
        return
    spent = profile["ms_per_batch"]
    total = sum(spent.values())
    print(f"\n{title}: {profile['requests_per_s']:.0f} req/s, {profile['batches']:.0f} batches, "
          f"{profile['mean_batch']:.1f} requests per batch; worker CPU per batch "
          f"{total * 1000:.0f} us")
    for stage in PRINT_ORDER:
        if stage in spent:
            print(f"  {stage:<22} {spent[stage] * 1000:7.0f} us  {spent[stage] / total:6.1%}")
