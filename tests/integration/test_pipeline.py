"""The whole path against a real TorchServe: build, register, predict, unregister."""

import json
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

from scripts.build import build_archive
from scripts.client import TorchServeClient
from tests.helpers import digits_spec_data, save_weights, write_spec


def _predict(client: TorchServeClient, inputs) -> tuple[int, dict]:
    response = client.predict("digits_cnn", json.dumps({"inputs": inputs}).encode(),
                              check=False)
    return response.status, response.json()


def test_build_register_predict_unregister(torchserve, digits_spec, digits_model, tmp_path):
    built = torchserve.mar("build", digits_spec)  # default export path: the server's model store
    archive = torchserve.config.model_store / "digits_cnn-1.0.mar"
    assert str(archive) in built.stdout and archive.is_file()
    torchserve.mar("register", archive, "--workers", "1")
    table = torchserve.mar("models").stdout
    assert re.search(r"digits_cnn\s+1\.0\s+yes\s+1/1 ready\s+1-1\s+16\s+5\s+120", table), table

    client = TorchServeClient(torchserve.config)
    torch.manual_seed(3)
    images = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        expected = digits_model(images)
    status, many = _predict(client, images.tolist())
    assert status == 200
    assert torch.allclose(torch.tensor(many["outputs"]), expected, atol=1e-5)
    status, one = _predict(client, images[0].tolist())
    assert status == 200
    assert torch.allclose(torch.tensor(one["outputs"]), expected[:1], atol=1e-5)
    assert one["predictions"][0]["label"] == str(int(expected[0].argmax()))

    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": images[1].tolist()}))
    printed = json.loads(torchserve.mar("predict", "digits_cnn", "--input", request).stdout)
    assert torch.allclose(torch.tensor(printed["outputs"]), expected[1:2], atol=1e-5)

    status, error = _predict(client, [[0.5] * 8] * 8)
    assert status == 400
    assert "`inputs` has shape [8, 8]; expected one sample of shape [1, 8, 8]" in error["message"]

    torchserve.mar("unregister", "digits_cnn", "1.0")
    assert "digits_cnn" not in torchserve.mar("models").stdout


def test_malformed_requests_do_not_fail_their_batch(torchserve, digits_spec, digits_model):
    build_archive(digits_spec, export_path=torchserve.config.model_store)
    torchserve.mar("register", torchserve.config.model_store / "digits_cnn-1.0.mar")
    client = TorchServeClient(torchserve.config)
    torch.manual_seed(4)
    images = torch.rand(32, 1, 8, 8)
    with torch.inference_mode():
        expected = digits_model(images)
    bodies = [[1.0, 2.0] if i % 4 == 0 else images[i].tolist() for i in range(32)]
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda body: _predict(client, body), bodies))
        worker_ids = {w["id"] for w in torchserve_workers(client)}
    finally:
        torchserve.mar("unregister", "digits_cnn")
    for i, (status, body) in enumerate(answers):
        if i % 4 == 0:
            assert status == 400 and "expected one sample of shape [1, 8, 8]" in body["message"]
        else:
            assert status == 200, body
            assert torch.allclose(torch.tensor(body["outputs"]), expected[i:i + 1], atol=1e-5)
    assert len(worker_ids) == 1  # the worker was never replaced


def test_body_that_is_not_json_gets_a_400_from_the_handler(torchserve, digits_spec):
    build_archive(digits_spec, export_path=torchserve.config.model_store)
    torchserve.mar("register", torchserve.config.model_store / "digits_cnn-1.0.mar")
    client = TorchServeClient(torchserve.config)
    try:
        response = client.predict("digits_cnn", b'{"inputs": [[0.5, 0.5', check=False)
    finally:
        torchserve.mar("unregister", "digits_cnn")
    assert response.status == 400
    assert "request body is not valid JSON" in response.json()["message"]
    # the handler parses bodies itself: TorchServe's own parser would log a traceback first
    assert "Failed json decoding" not in torchserve.config.model_log.read_text()


def torchserve_workers(client: TorchServeClient) -> list[dict]:
    return client.describe("digits_cnn")[0]["workers"]


def test_worker_failure_is_reported_and_its_registration_removed(torchserve, tmp_path, digits_model):
    save_weights(digits_model, tmp_path / "digits.pt")
    data = digits_spec_data(name="needs_gpu", weights="digits.pt")
    data["serving"]["device"] = "gpu"
    build_archive(write_spec(tmp_path, data), export_path=torchserve.config.model_store)
    result = torchserve.mar("register", torchserve.config.model_store / "needs_gpu-1.0.mar", check=False)
    assert result.returncode == 1
    # TorchServe keeps a zero-worker registration or drops it, depending on timing: either way
    # the worker's own error is shown and nothing stays registered.
    assert re.search("needs_gpu 1.0: its worker failed to start, (so the registration was removed"
                     "|and TorchServe kept no registration)", result.stderr), result.stderr
    assert "RuntimeError: spec asks for serving.device: gpu but" in result.stderr
    assert "needs_gpu" not in torchserve.mar("models").stdout


def test_token_authorization_is_on(torchserve):
    for url in (torchserve.config.management_url + "/models",
                torchserve.config.inference_url + "/ping"):
        try:
            urllib.request.urlopen(url, timeout=10)
            status = 200
        except urllib.error.HTTPError as err:
            status = err.code
        assert status == 400  # TorchServe's answer to a missing or wrong token


def test_registration_from_a_url_is_refused(torchserve):
    client = TorchServeClient(torchserve.config)
    response = client.register("http://127.0.0.1:9/evil.mar", initial_workers=1, check=False)
    assert response.status == 404
    assert "does not match any allowed URL" in response.message


def test_prometheus_metrics_carry_the_handlers_own_figures(torchserve, digits_spec):
    build_archive(digits_spec, export_path=torchserve.config.model_store)
    torchserve.mar("register", torchserve.config.model_store / "digits_cnn-1.0.mar")
    client = TorchServeClient(torchserve.config)
    scrape = lambda: _prometheus_samples(_metrics_text(torchserve), 'ModelName="digits_cnn"')
    before = scrape()  # earlier tests on this server served digits_cnn too: count from here
    grown = lambda now, name: now.get(name, 0) - before.get(name, 0)
    sent = 0
    try:
        assert _predict(client, [1.0])[0] == 400
        deadline = time.monotonic() + 60
        while True:  # the worker hands its sums over at most once a second, on a batch
            assert _predict(client, torch.rand(2, 1, 8, 8).tolist())[0] == 200
            sent += 1
            now = scrape()
            if grown(now, "MarRequests") >= 6 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        torchserve.mar("unregister", "digits_cnn")
    assert 6 <= grown(now, "MarRequests") <= sent + 1 and grown(now, "MarRequestErrors") == 1
    assert grown(now, "MarSamples") == 2 * (grown(now, "MarRequests") - 1)
    assert grown(now, "MarBatches") >= 1
    assert {"MarDecodeMs", "MarPredictMs", "MarEncodeMs", "MarBatchSize"} <= set(now)
    assert "ts_inference_requests_total" in _metrics_text(torchserve)  # TorchServe's own too


def _metrics_text(server) -> str:
    with urllib.request.urlopen(server.config.metrics_url + "/metrics", timeout=10) as answer:
        return answer.read().decode()


def _prometheus_samples(text: str, label: str) -> dict[str, float]:
    """metric name -> value of the samples whose labels contain `label` (Prometheus text)."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or label not in line:
            continue
        name_and_labels, value = line.rsplit(" ", 1)
        samples[name_and_labels.split("{", 1)[0]] = float(value)
    return samples
