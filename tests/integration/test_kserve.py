"""The KServe layout: TorchServe started from it as KServe's runtime starts it, and the
InferenceService checked against KServe's own models."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from scripts.config import free_ports, private_env
from tests.conftest import REPO_ROOT, digits_spec_data, run_mar, save_weights, write_spec

KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"
VALIDATOR = REPO_ROOT / "tests" / "kserve" / "validate_isvc.py"


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


@pytest.fixture
def runtime(tmp_path, digits_spec):
    """TorchServe started the way KServe's runtime starts it in the pod:
    `torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/...`
    with the layout's folder in place of /mnt/models. The config file is used as written; only
    the addresses come from TS_* environment variables (enable_envvars_config=true), loopback
    ports instead of the pod's 0.0.0.0:8085.
    """
    out = tmp_path / "kserve"
    run_mar("export-kserve", digits_spec, "--out", out)
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    env = {**private_env(tmp_path),
           "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{inference}",
           "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{management}",
           "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
           "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1", "TS_GRPC_INFERENCE_PORT": str(grpc_inference),
           "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1", "TS_GRPC_MANAGEMENT_PORT": str(grpc_management)}
    torchserve = str(Path(sys.executable).parent / "torchserve")
    environment = {**os.environ, **env}
    with open(tmp_path / "torchserve.out", "w") as log:
        subprocess.run([torchserve, "--start", f"--model-store={out / 'model-store'}",
                        f"--ts-config={out / 'config' / 'config.properties'}"],
                       cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT, check=True)
    base = f"http://127.0.0.1:{inference}"
    try:
        _wait_healthy(base)
        yield out, base, f"http://127.0.0.1:{metrics}"
    finally:
        subprocess.run([torchserve, "--stop"], cwd=tmp_path, env=environment,
                       capture_output=True, timeout=120)


def _wait_healthy(base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/ping", timeout=5) as answer:
                if json.loads(answer.read()).get("status") == "Healthy":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("TorchServe did not come up from the KServe layout")


def test_layout_serves_kserve_v1_and_plain_requests(runtime, digits_model):
    out, base, metrics = runtime
    assert sorted(p.name for p in out.iterdir()) == ["config", "inferenceservice.yaml",
                                                      "model-store"]
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        expected = digits_model(images)
    v1 = _post(f"{base}/v1/models/digits_cnn:predict", {"instances": images.tolist()})
    served = torch.tensor([p["outputs"] for p in v1["predictions"]])
    assert torch.allclose(served, expected, atol=1e-5)
    assert [p["label"] for p in v1["predictions"]] == [str(int(i)) for i in expected.argmax(1)]
    plain = _post(f"{base}/predictions/digits_cnn", {"inputs": images.tolist()})
    assert torch.allclose(torch.tensor(plain["outputs"]), expected, atol=1e-5)
    with urllib.request.urlopen(metrics + "/metrics", timeout=10) as answer:
        assert b"# TYPE" in answer.read()  # Prometheus text format


def test_config_carries_the_snapshot_and_settings(tmp_path, digits_model):
    save_weights(digits_model, tmp_path / "w.pt")
    one = write_spec(tmp_path, digits_spec_data(weights="w.pt"), "one.yaml")
    two = write_spec(tmp_path, digits_spec_data(weights="w.pt", version="2.0"), "two.yaml")
    run_mar("export-kserve", one, two, "--out", tmp_path / "out", "--max-replicas", "5")
    props = dict(line.split("=", 1) for line in (tmp_path / "out" / "config" / "config.properties")
                 .read_text().splitlines() if line and not line.startswith("#"))
    assert props["inference_address"] == "http://0.0.0.0:8085"
    assert props["enable_envvars_config"] == "true" and props["metrics_mode"] == "prometheus"
    assert props["model_store"] == "/mnt/models/model-store"
    versions = json.loads(props["model_snapshot"])["models"]["digits_cnn"]
    assert versions["2.0"]["defaultVersion"] and not versions["1.0"]["defaultVersion"]
    assert versions["1.0"] | {"defaultVersion": False} == {
        "defaultVersion": False, "marName": "digits_cnn-1.0.mar", "minWorkers": 1, "maxWorkers": 1,
        "batchSize": 16, "maxBatchDelay": 5, "responseTimeout": 120}
    service = yaml.safe_load((tmp_path / "out" / "inferenceservice.yaml").read_text())
    predictor = service["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 5)
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] == 16
    assert "nvidia.com/gpu" not in predictor["model"]["resources"]["limits"]


@pytest.mark.skipif(not KSERVE_PYTHON.exists(), reason="`make test` creates .venv-kserve")
@pytest.mark.parametrize("device", ["auto", "gpu"])
def test_inference_service_matches_kserve_models(tmp_path, digits_model, device):
    save_weights(digits_model, tmp_path / "w.pt")
    data = digits_spec_data(weights="w.pt")
    data["serving"]["device"] = device
    run_mar("export-kserve", write_spec(tmp_path, data), "--out", tmp_path / "out")
    isvc = tmp_path / "out" / "inferenceservice.yaml"
    limits = yaml.safe_load(isvc.read_text())["spec"]["predictor"]["model"]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (device == "gpu")
    result = subprocess.run([str(KSERVE_PYTHON), str(VALIDATOR), str(isvc)], capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "valid", result.stdout + result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(isvc.read_text().replace("scaleMetric", "scaleMetrik"))
    refused = subprocess.run([str(KSERVE_PYTHON), str(VALIDATOR), str(broken)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "unknown field(s) ['scaleMetrik']" in refused.stdout
