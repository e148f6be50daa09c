"""`mar bench` smoke run: every measurement runs on a tiny model and lands in the JSON."""

import json
import shutil

import pytest

from tests.helpers import run_mar


def _bench(tmp_path, *extra):
    out = tmp_path / "bench.json"
    result = run_mar("bench", "--size-mb", "4", "--repeats", "1", "--out", out, *extra)
    return result.stdout, json.loads(out.read_text())


def test_build_cold_start_and_memory(tmp_path):
    printed, results = _bench(tmp_path, "--throughput-seconds", "0", "--parts", "build", "cold-start")
    assert set(results["build"]) == {"mar build", "torch-model-archiver (default)",
                                     "torch-model-archiver (zip-store)", "plain copy of the weights",
                                     "cp + sha256sum of the weights"}
    cold = results["cold_start"]
    assert set(cold) == {"ours (.mar)", "ours (folder)", "stock eager (default .mar)",
                         "stock eager (zip-store .mar)", "TorchServe floor (no-op, zip-store)"}
    assert all(row["median_s"] > 0 for row in cold.values())
    assert cold["ours (.mar)"]["memory_growth_over_weights"] > 0
    assert cold["stock eager (default .mar)"]["memory_growth_over_weights"] > 0
    assert "x floor" in printed and "x ours" in printed


@pytest.mark.skipif(shutil.which("ab") is None or shutil.which("wrk") is None,
                    reason="ApacheBench (apache2-utils) or wrk not installed")
def test_throughput_and_protocols(tmp_path):
    printed, results = _bench(tmp_path, "--throughput-seconds", "1", "--concurrency", "4",
                              "--parts", "throughput", "protocols")
    row = results["throughput"]["4"]
    assert set(row) == {"ours", "stock BaseHandler", "no-op ceiling"}
    assert all(variant["requests_per_s"] > 0 and variant["failed"] == 0 for variant in row.values())
    assert "x ceiling" in printed
    protocols = results["protocols"]["4"]
    assert set(protocols) == {"JSON tensors", "binary tensors"}
    assert all(v["requests_per_s"] > 0 and v["failed"] == 0 for v in protocols.values())
    assert "x JSON" in printed
