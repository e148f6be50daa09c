"""Operations on a live TorchServe: versions, promote under load, faults, restarts, secure defaults."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import psutil
import pytest
import torch

from scripts.build import build_archive
from scripts.client import TorchServeClient
from tests.helpers import digits_spec_data, save_weights, write_spec
from tests.integration.conftest import ServerUnderTest


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """This module's server: its tests restart it, kill its workers and load it, so it is not the
    session's."""
    started = ServerUnderTest.started(tmp_path_factory.mktemp("operations"))
    yield started
    started.mar("serve", "stop", check=False)


@pytest.fixture
def server(module_server):
    """The module's server, left running and empty after each test."""
    yield module_server
    module_server.reset()


@pytest.fixture
def two_versions(server, tmp_path, digits_model):
    """digits_cnn 1.0 and 2.0 built into the server's store (2.0 with other weights), by the
    code `mar build` runs, in this process (a `mar` process per build imports torch again)."""
    save_weights(digits_model, tmp_path / "v1.pt")
    torch.manual_seed(99)
    other = type(digits_model)().eval()
    save_weights(other, tmp_path / "v2.pt")
    for version, weights in (("1.0", "v1.pt"), ("2.0", "v2.pt")):
        spec = write_spec(tmp_path, digits_spec_data(version=version, weights=weights),
                          f"v{version}.yaml")
        build_archive(spec, export_path=server.config.model_store)
    store = server.config.model_store
    return store / "digits_cnn-1.0.mar", store / "digits_cnn-2.0.mar", digits_model, other


class Load:
    """Requests in background threads until stopped; counts every answer by status."""

    def __init__(self, config, name: str, body: bytes, threads: int = 4):
        self.url = urlsplit(config.inference_url)
        self.config, self.name, self.body = config, name, body
        self.statuses: list[int] = []
        self.outputs: list = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self):
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)
        while not self._stop.is_set():
            try:
                connection.request("POST", f"/predictions/{self.name}", self.body, {
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {self.config.key('inference')}"})
                response = connection.getresponse()
                payload = response.read()
                self.statuses.append(response.status)
                if response.status == 200:
                    self.outputs.append(json.loads(payload)["outputs"][0])
            except (OSError, http.client.HTTPException):
                self.statuses.append(-1)
                connection.close()
                connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)

    @property
    def failed(self) -> int:
        return sum(1 for status in self.statuses if status != 200)


def _sample_body(image: torch.Tensor) -> bytes:
    return json.dumps({"inputs": image.tolist()}).encode()


# ---- management commands ----

def test_register_options_scale_default_and_models_table(server, two_versions):
    v1, v2, *_ = two_versions
    server.mar("register", v1, "--min-workers", "1", "--max-workers", "2", "--batch-size", "4",
               "--max-batch-delay", "20", "--set-default")
    server.mar("register", v2)
    table = server.mar("models", "digits_cnn").stdout
    assert re.search(r"digits_cnn\s+1\.0\s+yes\s+1/1 ready\s+1-2\s+4\s+20\s+120", table), table
    assert re.search(r"digits_cnn\s+2\.0\s+1/1 ready\s+1-1\s+16\s+5\s+120", table), table

    server.mar("set-default", "digits_cnn", "2.0")
    server.mar("scale", "digits_cnn", "--version", "2.0", "--min", "2", "--max", "3")
    described = {m["modelVersion"]: m for m in json.loads(server.mar("models", "--json").stdout)}
    assert described["2.0"]["isDefault"] and not described["1.0"]["isDefault"]
    assert (described["2.0"]["minWorkers"], described["2.0"]["maxWorkers"]) == (2, 3)
    assert len(described["2.0"]["workers"]) == 2

    refused = server.mar("register", v1, "--response-timeout", "5", check=False)
    assert refused.returncode == 1 and "Set serving.response_timeout_s in the spec" in refused.stderr


def test_expired_token_is_renewed(server, two_versions):
    server.mar("register", two_versions[0])
    stale = server.config.key_file.read_text()
    client = TorchServeClient(server.config)
    client._renew("management")  # TorchServe issues a new key; the one saved above is now refused
    client._renew("inference")
    server.config.key_file.write_text(stale)
    assert "digits_cnn" in server.mar("models").stdout  # refused, renewed, retried
    assert json.loads(server.config.key_file.read_text())["management"]["key"] != \
        json.loads(stale)["management"]["key"]


# ---- promote ----

def test_promote_under_load_fails_no_request(server, two_versions):
    v1, v2, old_model, new_model = two_versions
    server.mar("register", v1)
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        old_out, new_out = old_model(image[None])[0], new_model(image[None])[0]
    with Load(server.config, "digits_cnn", _sample_body(image)) as load:
        time.sleep(1)
        result = server.mar("promote", v2)
        time.sleep(1)
    assert "promoted: 2.0 is the default version; 1.0 was retired" in result.stdout
    assert load.statuses and load.failed == 0, f"{load.failed} of {len(load.statuses)} failed"
    served = [torch.tensor(o) for o in load.outputs]
    assert torch.allclose(served[0], old_out, atol=1e-5)
    assert torch.allclose(served[-1], new_out, atol=1e-5)
    versions = [m["modelVersion"] for m in json.loads(server.mar("models", "--json").stdout)]
    assert versions == ["2.0"]


def test_failed_promote_keeps_the_old_version_serving(server, two_versions, tmp_path):
    v1, *_ = two_versions
    server.mar("register", v1)
    data = digits_spec_data(version="3.0", weights="v1.pt")
    data["serving"]["device"] = "gpu"  # its worker cannot start on this host
    server.mar("build", write_spec(tmp_path, data, "v3.yaml"))
    result = server.mar("promote", server.config.model_store / "digits_cnn-3.0.mar", check=False)
    assert result.returncode == 1
    assert "its worker failed to start" in result.stderr
    assert "serving.device: gpu" in result.stderr
    described = json.loads(server.mar("models", "--json").stdout)
    assert [(m["modelVersion"], m["isDefault"]) for m in described] == [("1.0", True)]


# ---- reliability ----

def test_ten_thousand_requests_with_malformed_ones_mixed_in(server, two_versions):
    server.mar("register", two_versions[0])
    model = two_versions[2]
    pid_before = _worker_pids(server)
    images = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = model(images)
    url = urlsplit(server.config.inference_url)
    key = server.config.key("inference")
    local = threading.local()

    def send(i: int):
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        malformed = i % 10 == 0
        body = b'{"inputs": [1, 2, 3]}' if malformed else _sample_body(images[i % 50])
        local.connection.request("POST", "/predictions/digits_cnn", body, {
            "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        response = local.connection.getresponse()
        return i, malformed, response.status, json.loads(response.read())

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(send, range(10_000)))
    for i, malformed, status, body in answers:
        if malformed:
            assert status == 400 and "expected one sample of shape [1, 8, 8]" in body["message"]
        else:
            assert status == 200, body
            assert torch.allclose(torch.tensor(body["outputs"][0]), expected[i % 50], atol=1e-5)
    assert _worker_pids(server) == pid_before  # no worker was restarted


def test_oversized_payload_is_refused_without_reaching_the_worker(server, two_versions):
    server.mar("register", two_versions[0])
    client = TorchServeClient(server.config)
    url = urlsplit(server.config.inference_url)
    # An 8 MB body (max_request_size is 6.5 MB), announced the way curl does: TorchServe answers
    # before the body is sent. A client that just sends it gets the 413 or a reset connection.
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(f"POST /predictions/digits_cnn HTTP/1.1\r\nHost: {url.hostname}\r\n"
                     f"Authorization: Bearer {server.config.key('inference')}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 8000000\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    request = server.config.workdir / "huge.json"
    request.write_bytes(b'{"inputs": [' + b"0.5," * 2_000_000 + b"0.5]}")
    refused = server.mar("predict", "digits_cnn", "--input", request, check=False)
    assert refused.returncode == 1 and "max_request_size" in refused.stderr
    image = torch.rand(1, 8, 8)
    assert client.predict("digits_cnn", _sample_body(image)).status == 200


def test_killed_worker_is_replaced_and_serving_recovers(server, two_versions):
    server.mar("register", two_versions[0])
    body = _sample_body(torch.rand(1, 8, 8))
    (victim,) = _worker_pids(server)
    with Load(server.config, "digits_cnn", body) as load:
        time.sleep(1)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not _ready_worker_pids(server) - {victim}:
            assert time.monotonic() < deadline, "TorchServe did not restart the worker"
            time.sleep(0.2)
        recovered_at = len(load.statuses)
        time.sleep(2)
    after = load.statuses[recovered_at:]
    print(f"\nkill -9 under load: {load.failed} of {len(load.statuses)} requests failed; "
          f"{len(after)} after recovery, all 200: {set(after) == {200}}")
    assert after and set(after) == {200}
    client = TorchServeClient(server.config)
    assert all(client.predict("digits_cnn", body).status == 200 for _ in range(20))


def test_restart_restores_models_and_default_versions(server, two_versions):
    v1, v2, *_ = two_versions
    server.mar("register", v1)
    server.mar("register", v2, "--set-default")
    server.mar("serve", "stop")
    started = server.mar("serve", "start")
    assert "restored digits_cnn 1.0" in started.stdout
    assert "restored digits_cnn 2.0 (default)" in started.stdout
    described = json.loads(server.mar("models", "--json").stdout)
    assert sorted((m["modelVersion"], m["isDefault"]) for m in described) == [
        ("1.0", False), ("2.0", True)]
    assert all(w["status"] == "READY" for m in described for w in m["workers"])  # start waited
    client = TorchServeClient(server.config)
    assert client.predict("digits_cnn", _sample_body(torch.rand(1, 8, 8))).status == 200
    server.mar("serve", "stop")
    assert "restored" not in server.mar("serve", "start", "--no-restore").stdout
    assert "digits_cnn" not in server.mar("models").stdout


# ---- secure defaults ----

def test_every_port_listens_on_loopback_only(server):
    java = [p for p in psutil.process_iter() if _is_server_of(p, server)]
    deadline = time.monotonic() + 30  # the gRPC servers bind a moment after /ping is healthy
    while True:
        listening = [c for p in java for c in p.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        if len(listening) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(listening) >= 5  # inference, management, metrics, gRPC inference and management
    # Java reports IPv4 sockets as IPv4-mapped IPv6 addresses (::ffff:127.0.0.1)
    addresses = {ipaddress.ip_address(c.laddr.ip) for c in listening}
    assert {getattr(a, "ipv4_mapped", None) or a for a in addresses} == {
        ipaddress.ip_address("127.0.0.1")}


def test_config_keeps_the_secure_settings():
    from tests.helpers import REPO_ROOT
    props = dict(line.split("=", 1) for line in (REPO_ROOT / "config.properties").read_text()
                 .splitlines() if line and not line.startswith("#"))
    assert props["disable_token_authorization"] == "false"
    assert props["install_py_dep_per_model"] == "false"
    assert props["enable_model_api"] == "true"
    assert "http" not in props["allowed_urls"]


def _is_server_of(process, server) -> bool:
    try:
        return "ModelServer" in " ".join(process.cmdline()) and \
            process.cwd() == str(server.config.workdir)
    except (psutil.Error, OSError):
        return False


def _worker_pids(server) -> set[int]:
    return {int(w["pid"]) for m in TorchServeClient(server.config).describe("digits_cnn")
            for w in m["workers"]}


def _ready_worker_pids(server) -> set[int]:
    return {int(w["pid"]) for m in TorchServeClient(server.config).describe("digits_cnn")
            for w in m["workers"] if w["status"] == "READY" and w.get("pid") not in (None, -1)}


def test_registering_a_registered_version_changes_nothing(server, two_versions):
    server.mar("register", two_versions[0])
    pids = _worker_pids(server)
    again = server.mar("register", two_versions[0], check=False)
    assert again.returncode == 1 and "digits_cnn 1.0 is already registered" in again.stderr
    assert _worker_pids(server) == pids  # still registered, same worker
