"""The KServe layout, served the way KServe's `kserve-torchserve` runtime serves it, and the
InferenceService checked against KServe's own models.

What the runtime does to the pod, and how the pod fixture mimics it:
- the storage initializer copies the storage URI into /mnt/models, mounted read-only: the layout is
  copied into a folder of its own, and nothing may be written into it (checked file by file);
- the container runs `torchserve --start --model-store=/mnt/models/model-store
  --ts-config=/mnt/models/config/config.properties` in its working directory /home/model-server as
  user model-server (uid 1000): the same command on the copy, in a fresh home folder, as uid 1000
  where this machine lets uid 1000 run the interpreter (not where Python lives under /root);
- it sets TS_SERVICE_ENVELOPE from the InferenceService's protocol: kserve (v1), kservev2 (v2), or
  empty: each, in turn;
- KServe's wrapper in the pod waits until GET <management_address>/models/<name> (no token) shows a
  READY worker, then forwards requests to TorchServe with KServe's own REST client: the same GET,
  and that client (tests/kserve/infer.py, in .venv-kserve) for v1 and v2.
The ports are the one change to the exported config: free loopback ports instead of 0.0.0.0:8085.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from scripts.config import free_ports
from tests.helpers import REPO_ROOT, digits_spec_data, run_mar, save_weights, write_spec

KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"
VALIDATOR = REPO_ROOT / "tests" / "kserve" / "validate_isvc.py"
KSERVE_CLIENT = REPO_ROOT / "tests" / "kserve" / "infer.py"
POD_UID = 1000  # model-server in TorchServe's images
needs_kserve = pytest.mark.skipif(not KSERVE_PYTHON.exists(), reason="`make test` creates .venv-kserve")


class Pod:
    """TorchServe started from an exported layout as the runtime starts it."""

    def __init__(self, layout: Path, root: Path, envelope: str | None):
        self.root, self.envelope = root, envelope
        self.mount = root / "mnt" / "models"
        shutil.copytree(layout, self.mount)
        self.ports = dict(zip(("inference", "metrics", "grpc_inference", "grpc_management"),
                              free_ports(4)))
        self._move_ports(self.mount / "config" / "config.properties")
        self.home = root / "home" / "model-server"
        self.home.mkdir(parents=True)
        (self.home / "tmp").mkdir()
        self.user = _pod_user()
        if self.user is not None:
            for path in (root / "home", self.home, self.home / "tmp"):
                os.chown(path, *self.user)
        self.env = {**os.environ, "HOME": str(self.home), "TMPDIR": str(self.home / "tmp"),
                    "TEMP": str(self.home / "tmp"),
                    **({"TS_SERVICE_ENVELOPE": envelope} if envelope is not None else {})}
        self.layout_before = _tree_digest(self.mount)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    def _move_ports(self, config: Path) -> None:
        moved = {"inference_address": f"http://127.0.0.1:{self.ports['inference']}",
                 "management_address": f"http://127.0.0.1:{self.ports['inference']}",
                 "metrics_address": f"http://127.0.0.1:{self.ports['metrics']}",
                 "grpc_inference_port": str(self.ports["grpc_inference"]),
                 "grpc_management_port": str(self.ports["grpc_management"])}
        lines = [f"{line.split('=', 1)[0]}={moved[line.split('=', 1)[0]]}"
                 if line.split("=", 1)[0] in moved else line
                 for line in config.read_text().splitlines()]
        config.write_text("\n".join(lines) + "\n")

    def torchserve(self, *args: str) -> None:
        user = {"user": self.user[0], "group": self.user[1], "extra_groups": []} if self.user else {}
        output = self.root / "torchserve.out"
        # The Java server inherits stdout: a file, not a pipe that would never close.
        with output.open("a") as sink:
            code = subprocess.call([str(Path(sys.executable).parent / "torchserve"), *args],
                                   cwd=self.home, env=self.env, stdout=sink,
                                   stderr=subprocess.STDOUT, timeout=120, **user)
        assert code == 0, output.read_text()

    def start(self) -> None:
        self.torchserve("--start", f"--model-store={self.mount / 'model-store'}",
                        f"--ts-config={self.mount / 'config' / 'config.properties'}")

    def wait_ready(self, model: str, timeout_s: float = 180) -> None:
        """Poll as KServe's wrapper does before it reports the model ready: a READY worker of
        the default version, from the management API, without a token."""
        url = f"{self.base}/models/{model}?customized=false"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    workers = json.loads(answer.read())[0]["workers"]
                if any(w["status"] == "READY" for w in workers):
                    return
            except (OSError, ValueError, KeyError, IndexError):
                pass  # not listening yet, or the model not registered yet
            time.sleep(0.3)
        log = self.home / "logs" / "model_log.log"
        raise AssertionError(f"{model} never had a READY worker; model log:\n"
                             f"{log.read_text()[-3000:] if log.exists() else '(none)'}")

    def stop(self) -> None:
        self.torchserve("--stop")


def _pod_user() -> tuple[int, int] | None:
    """(uid, gid) of the pod's user when this process can switch to it and that user can run
    this interpreter; None to run as the current user."""
    if os.geteuid() != 0:
        return None
    try:
        probe = subprocess.run([sys.executable, "-c", "import torch, ts"], capture_output=True,
                               user=POD_UID, group=POD_UID, extra_groups=[], cwd="/", timeout=120)
    except PermissionError:  # the interpreter sits where that user cannot reach it
        return None
    return (POD_UID, POD_UID) if probe.returncode == 0 else None


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _kserve_client(pod: Pod, protocol: str, payload: dict, folder: Path) -> dict:
    request = folder / f"request-{protocol}.json"
    request.write_text(json.dumps(payload))
    result = subprocess.run([str(KSERVE_PYTHON), str(KSERVE_CLIENT), pod.base, "digits_cnn",
                             protocol, str(request)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The digits model exported for KServe, and its eager twin."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    from model_defs import create_model

    model = create_model("digits_cnn", **digits_spec_data()["params"]).eval()
    save_weights(model, folder / "digits.pt")
    spec = write_spec(folder, digits_spec_data(weights="digits.pt"))
    run_mar("export-kserve", spec, "--out", folder / "layout")
    return folder / "layout", model


@pytest.fixture(scope="module", params=[None, "kserve", "kservev2"],
                ids=["no-envelope", "TS_SERVICE_ENVELOPE=kserve", "TS_SERVICE_ENVELOPE=kservev2"])
def pod(request, exported):
    layout, model = exported
    root = Path(tempfile.mkdtemp(prefix="mar-kserve-pod-"))
    os.chmod(root, 0o755)  # the pod's user must reach its home folder
    pod = Pod(layout, root, request.param)
    pod.start()
    try:
        pod.wait_ready("digits_cnn")
        yield pod, model
    finally:
        pod.stop()
        shutil.rmtree(root, ignore_errors=True)


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@needs_kserve
def test_v1_through_kserves_client_equals_eager(pod, tmp_path):
    pod, model = pod
    images = _images(3, 11)
    with torch.inference_mode():
        expected = model(images)
    answer = _kserve_client(pod, "v1", {"instances": images.tolist()}, tmp_path)
    served = torch.tensor([p["outputs"] for p in answer["predictions"]])
    assert torch.allclose(served, expected, atol=1e-5)
    assert [p["label"] for p in answer["predictions"]] == [str(int(i)) for i in expected.argmax(1)]


@needs_kserve
def test_v2_json_tensors_through_kserves_client_equal_eager(pod, tmp_path):
    pod, model = pod
    images = _images(4, 12)
    with torch.inference_mode():
        expected = model(images)
    tensor = {"name": "input", "shape": [4, 1, 8, 8], "datatype": "FP32",
              "data": images.flatten().tolist()}
    answer = _kserve_client(pod, "v2", tensor, tmp_path)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert answer["model_name"] == "digits_cnn" and answer["id"] == "req-1"
    assert outputs["output"]["shape"] == [4, 10] and outputs["output"]["datatype"] == "FP32"
    assert torch.allclose(torch.tensor(outputs["output"]["data"]), expected, atol=1e-5)
    assert outputs["label"]["data"] == [str(int(i)) for i in expected.argmax(1)]


def test_malformed_instances_get_400s_and_their_batch_neighbours_200s(pod):
    pod, model = pod
    images = _images(32, 13)
    with torch.inference_mode():
        expected = model(images)
    bodies = [{"instances": [[0.5, 0.5]]} if i % 4 == 0 else {"instances": images[i:i + 1].tolist()}
              for i in range(32)]
    url = f"{pod.base}/v1/models/digits_cnn:predict"
    with ThreadPoolExecutor(max_workers=16) as threads:  # batch_size 16: they share batches
        answers = list(threads.map(lambda body: _post(url, body), bodies))
    for i, (status, body) in enumerate(answers):
        if i % 4 == 0:
            assert status == 400 and "`instances` has shape [1, 2]" in body["error"]
        else:
            assert status == 200, body
            served = torch.tensor(body["predictions"][0]["outputs"])
            assert torch.allclose(served, expected[i], atol=1e-5)
    status, error = _post(f"{pod.base}/v2/models/digits_cnn/infer", {"inputs": [
        {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 63}]})
    assert status == 400 and "has 63 values but its shape [1, 1, 8, 8] holds 64" in error["error"]


def test_plain_requests_metrics_and_a_read_only_layout(pod):
    pod, model = pod
    images = _images(2, 14)
    with torch.inference_mode():
        expected = model(images)
    status, plain = _post(f"{pod.base}/predictions/digits_cnn", {"inputs": images.tolist()})
    assert status == 200 and torch.allclose(torch.tensor(plain["outputs"]), expected, atol=1e-5)
    with urllib.request.urlopen(f"http://127.0.0.1:{pod.ports['metrics']}/metrics",
                                timeout=10) as answer:
        assert b"# TYPE" in answer.read()  # Prometheus text, where the runtime's annotation says
    assert _tree_digest(pod.mount) == pod.layout_before  # nothing written into /mnt/models


def test_config_carries_the_snapshot_and_settings(tmp_path, digits_model):
    save_weights(digits_model, tmp_path / "w.pt")
    one = write_spec(tmp_path, digits_spec_data(weights="w.pt"), "one.yaml")
    two = write_spec(tmp_path, digits_spec_data(weights="w.pt", version="2.0"), "two.yaml")
    run_mar("export-kserve", one, two, "--out", tmp_path / "out", "--max-replicas", "5")
    props = dict(line.split("=", 1) for line in (tmp_path / "out" / "config" / "config.properties")
                 .read_text().splitlines() if line and not line.startswith("#"))
    assert props["inference_address"] == "http://0.0.0.0:8085"
    assert props["enable_envvars_config"] == "false" and props["metrics_mode"] == "prometheus"
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


@needs_kserve
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
