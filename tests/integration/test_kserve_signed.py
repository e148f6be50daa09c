"""A signed KServe layout, started the way its pod starts it: the InferenceService's own command,
taken from the exported YAML unchanged, run by the image's entrypoint semantics in private mount,
network and process namespaces (tests/kserve/pod.sh): the layout read-only at /mnt/models, the
Secret's public key at /mnt/mar-trust, TorchServe on the pod's own ports. A tampered copy makes the
container exit non-zero before TorchServe starts; the untampered one serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import REPO_ROOT, digits_model, digits_versions, run_mar
from tests.keys import make_key_pair

POD = REPO_ROOT / "tests" / "kserve" / "pod.sh"
PROBE = REPO_ROOT / "tests" / "kserve" / "probe.py"
KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"
VALIDATOR = REPO_ROOT / "tests" / "kserve" / "validate_isvc.py"


def _namespaces_available() -> str | None:
    probe = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc",
                            "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else probe.stderr.strip() or "unshare failed"


needs_namespaces = pytest.mark.skipif(_namespaces_available() is not None,
                                      reason="a pod needs mount, network and pid namespaces "
                                             "(root, or unprivileged user namespaces)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signed-export")
    keys = make_key_pair(folder, "publisher")
    archive = digits_versions(folder, ("1.0",))["1.0"]
    run_mar("export-kserve", archive, "--out", folder / "layout", "--sign-key", keys.private,
            "--image", "registry.example.com/torchserve-kfs-verify:0.12.0")
    service = yaml.safe_load((folder / "layout" / "inferenceservice.yaml").read_text())
    return folder / "layout", keys, service


def _run_pod(layout: Path, key: Path, root: Path, command: str) -> subprocess.CompletedProcess:
    """The pod on a copy of `layout` (as the storage initializer copies it), the Secret holding
    `key` as publisher.pub."""
    copy, secret, home = root / "storage", root / "secret", root / "home" / "model-server"
    shutil.copytree(layout, copy)
    secret.mkdir()
    shutil.copyfile(key, secret / "publisher.pub")
    (home / "tmp").mkdir(parents=True)
    request = root / "request.json"
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    request.write_text(json.dumps({"instances": images.tolist()}))
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home / "tmp"), "TEMP": str(home / "tmp"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc",
                           "bash", str(POD), str(copy), str(secret), str(home), command,
                           sys.executable, str(PROBE), "digits_cnn", str(request),
                           str(root / "answer.json")],
                          capture_output=True, text=True, env=env, timeout=300)


def _pod_command(service: dict) -> str:
    (command,) = service["spec"]["predictor"]["model"]["args"]
    return command


@needs_namespaces
def test_the_signed_pod_verifies_then_serves(exported, tmp_path):
    layout, keys, service = exported
    result = _run_pod(layout, keys.public, tmp_path, _pod_command(service))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification succeeded" in result.stdout
    answer = json.loads((tmp_path / "answer.json").read_text())
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = digits_model()(images)
    served = torch.tensor([p["outputs"] for p in answer["body"]["predictions"]])
    assert answer["status"] == 200 and torch.allclose(served, expected, atol=1e-5)


@needs_namespaces
@pytest.mark.parametrize("change", ["a changed archive byte", "a changed config line",
                                    "another publisher's key"])
def test_a_tampered_pod_exits_non_zero_and_torchserve_never_starts(exported, tmp_path, change):
    layout, keys, service = exported
    tampered = tmp_path / "tampered-layout"
    shutil.copytree(layout, tampered)
    key = keys.public
    if change == "a changed archive byte":
        archive = tampered / "model-store" / "digits_cnn-1.0.mar"
        data = bytearray(archive.read_bytes())
        data[len(data) // 3] ^= 0x01
        archive.write_bytes(bytes(data))
    elif change == "a changed config line":
        config = tampered / "config" / "config.properties"
        config.write_text(config.read_text().replace("enable_model_api=false", "enable_model_api=true"))
    else:
        key = make_key_pair(tmp_path, "someone-else").public
    pod = tmp_path / "pod"
    pod.mkdir()
    result = _run_pod(tampered, key, pod, _pod_command(service))
    assert result.returncode != 0
    assert "Verification failed" in result.stdout + result.stderr
    home = pod / "home" / "model-server"
    assert not (home / "logs").exists() and not (home / "tmp" / ".model_server.pid").exists()
    assert not (pod / "answer.json").exists()  # the wrapper's stand-in never ran


def test_the_signed_inference_service_reads_the_key_from_a_secret(exported):
    layout, _, service = exported
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["image"] == "registry.example.com/torchserve-kfs-verify:0.12.0"
    assert _pod_command(service).startswith(
        "model_signing verify key /mnt/models --signature /mnt/models/model.sig --public_key "
        "/mnt/mar-trust/publisher.pub || exit 1; torchserve --start")
    assert model["volumeMounts"] == [{"name": "mar-trust", "mountPath": "/mnt/mar-trust",
                                      "readOnly": True}]
    assert predictor["volumes"] == [{"name": "mar-trust",
                                     "secret": {"secretName": "digits-cnn-model-signing"}}]
    if KSERVE_PYTHON.exists():  # KServe's own v1beta1 models accept it (`make test` has them)
        checked = subprocess.run([str(KSERVE_PYTHON), str(VALIDATOR),
                                  str(layout / "inferenceservice.yaml")],
                                 capture_output=True, text=True, timeout=120)
        assert checked.stdout.strip() == "valid", checked.stdout + checked.stderr


def test_a_published_layout_lands_whole_signature_last_and_verifies_after_download(
        s3, exported, tmp_path):
    layout, keys, _ = exported
    address = "s3://models/kserve/digits-cnn-1.0"
    archive = next((layout / "model-store").glob("*.mar"))
    run_mar("export-kserve", archive, "--out", tmp_path / "out", "--sign-key", keys.private,
            "--publish", address, env=s3.env())
    service = yaml.safe_load((tmp_path / "out" / "inferenceservice.yaml").read_text())
    assert service["spec"]["predictor"]["model"]["storageUri"] == address
    again = run_mar("export-kserve", archive, "--out", tmp_path / "again", "--sign-key",
                    keys.private, "--publish", address, env=s3.env(), check=False)
    assert again.returncode == 1 and "a layout published there never changes" in again.stderr
    download = tmp_path / "mnt-models"  # what KServe's storage initializer copies
    client = s3.client()
    for item in client.list_objects_v2(Bucket="models", Prefix="kserve/digits-cnn-1.0/")["Contents"]:
        target = download / item["Key"].removeprefix("kserve/digits-cnn-1.0/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("models", item["Key"], str(target))
    verified = subprocess.run([str(Path(sys.executable).parent / "model_signing"), "verify", "key",
                               str(download), "--signature", str(download / "model.sig"),
                               "--public_key", str(keys.public)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_image_without_a_signature_is_refused_with_the_flag_to_add(exported, tmp_path):
    layout, keys, _ = exported
    archive = next((layout / "model-store").glob("*.mar"))
    refused = run_mar("export-kserve", archive, "--out", tmp_path / "a", "--image", "x:1",
                      check=False)
    assert refused.returncode == 1 and "add --sign-key KEY.pem" in refused.stderr
    run_mar("export-kserve", archive, "--out", tmp_path / "b", "--image", "x:1", "--sign-key",
            keys.private)
