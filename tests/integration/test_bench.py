"""`mar bench` smoke run: every measurement runs on a tiny model and lands in the JSON."""

import json
import shutil

import pytest

from tests.helpers import run_mar


def _bench(tmp_path, *extra):
    out = tmp_path / "bench.json"
    result = run_mar("bench", "--size-mb", "4", "--repeats", "1", "--out", out, *extra)
    return result.stdout, json.loads(out.read_text())


LOAD_TOOLS = shutil.which("ab") is not None and shutil.which("wrk") is not None
needs_load_tools = pytest.mark.skipif(not LOAD_TOOLS,
                                      reason="ApacheBench (apache2-utils) or wrk not installed")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One `mar bench` run of every part these tests read (one TorchServe for all of them)."""
    parts = ["build", "cold-start", "hostile"] + (["throughput", "protocols"] if LOAD_TOOLS else [])
    return _bench(tmp_path_factory.mktemp("bench"), "--throughput-seconds", "1",
                  "--concurrency", "4", "--parts", *parts)


def test_build_cold_start_and_memory(bench):
    printed, results = bench
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


@needs_load_tools
def test_throughput_and_protocols(bench):
    printed, results = bench
    throughput = results["throughput"]
    assert set(throughput["json"]["4"]) == {"ours", "stock BaseHandler", "forward only",
                                            "no-op ceiling"}
    assert set(throughput["binary"]["4"]) == {"ours", "no-op binary v2"}
    for table in (throughput["json"]["4"], throughput["binary"]["4"]):
        assert all(v["requests_per_s"] > 0 and v["failed"] == 0 for v in table.values())
    assert "x ceiling" in printed
    for kind in ("json", "binary"):  # py-spy's samples of our worker, in stages per batch
        profile = throughput["profile"][kind]
        assert profile["batches"] > 0 and profile["mean_batch"] >= 1, profile
        spent = profile["ms_per_batch"]
        assert spent["forward"] > 0 and spent["decode"] > 0 and spent["TorchServe protocol"] > 0
    assert "where a batch's time goes in our worker, binary at c=16" in printed
    protocols = results["protocols"]["4"]
    assert set(protocols) == {"JSON tensors", "binary tensors"}
    assert all(v["requests_per_s"] > 0 and v["failed"] == 0 for v in protocols.values())
    assert "x JSON" in printed


def test_hostile_part(bench):
    printed, results = bench
    hostile = results["hostile"]
    for run in ("clean", "mixed"):
        row = hostile["mix"][run]
        assert row["valid_sent"] > 0 and row["valid_ok"] == row["valid_sent"], row
        assert row["five_hundreds"] == 0, row
    assert hostile["mix"]["mixed"]["hostile_sent"] > 0
    assert hostile["mix"]["mixed"]["hostile_4xx"] == hostile["mix"]["mixed"]["hostile_sent"]
    assert hostile["mix"]["clean"]["hostile_sent"] == 0
    assert 0 < hostile["text"]["refusal_ms"] < hostile["text"]["tokenize_ms"]
    assert "valid p99 with 10% hostile / without" in printed


def test_an_unknown_part_is_refused_with_the_parts_named(tmp_path):
    result = run_mar("bench", "--size-mb", "4", "--parts", "hostlie", "--out", tmp_path / "b.json",
                     check=False)
    assert result.returncode != 0
    assert "unknown bench part hostlie; the parts are build, cold-start" in result.stderr
    fixed = run_mar("bench", "--size-mb", "4", "--repeats", "1", "--throughput-seconds", "0",
                    "--parts", "build", "--out", tmp_path / "b.json")
    assert fixed.returncode == 0
