"""A real TorchServe for the integration tests, on free ports, in a private folder.

The server gets its own TMPDIR/TEMP (TorchServe keeps its pid file and worker sockets there), so it
never touches, or stops, a server the user is running.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.config import ServerConfig, read_config
from tests.conftest import REPO_ROOT, run_mar


@dataclass(frozen=True)
class TestServer:
    config: ServerConfig
    env: dict[str, str]

    def mar(self, *args, check: bool = True):
        """Run `mar` against this server (its --config and environment)."""
        return run_mar(*args, "--config", self.config.path, env=self.env, check=check)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def write_test_config(workdir: Path) -> Path:
    """The repo's config.properties with this server's ports and model store swapped in."""
    inference, management, metrics, grpc_inf, grpc_mgmt, worker = _free_ports(6)
    overrides = {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inf),
        "grpc_management_port": str(grpc_mgmt),
        "initial_worker_port": str(worker),
        "model_store": str(workdir / "model_store"),
    }
    lines = []
    for line in (REPO_ROOT / "config.properties").read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(f"{key}={overrides.pop(key)}" if key in overrides and "=" in line else line)
    lines += [f"{key}={value}" for key, value in overrides.items()]
    path = workdir / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("torchserve")
    (workdir / "tmp").mkdir()
    env = {"TMPDIR": str(workdir / "tmp"), "TEMP": str(workdir / "tmp")}
    server = TestServer(read_config(write_test_config(workdir)), env)
    server.mar("serve", "start")
    try:
        yield server
    finally:
        server.mar("serve", "stop")
