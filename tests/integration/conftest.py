"""A real TorchServe for the integration tests, on free ports, in a private folder.

The server gets its own TMPDIR/TEMP (TorchServe keeps its pid file and worker sockets there), so it
never touches, or stops, a server the user is running.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.client import TorchServeClient
from scripts.config import ServerConfig, private_env, read_config, write_private_config
from tests.helpers import run_mar


@dataclass(frozen=True)
class ServerUnderTest:
    config: ServerConfig
    env: dict[str, str]

    @classmethod
    def started(cls, workdir: Path) -> "ServerUnderTest":
        server = cls(read_config(write_private_config(workdir)), private_env(workdir))
        server.mar("serve", "start")
        return server

    def mar(self, *args, check: bool = True):
        """Run `mar` against this server (its --config and environment)."""
        return run_mar(*args, "--config", self.config.path, env=self.env, check=check)

    def reset(self) -> None:
        """Running and empty again, whatever a test left behind."""
        client = TorchServeClient(self.config)
        if client.ping_status() != "Healthy":
            self.mar("serve", "start", "--no-restore")
        for model in client.list_models():
            for version in client.describe(model["modelName"]):
                client.unregister(model["modelName"], version["modelVersion"], check=False)


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory):
    server = ServerUnderTest.started(tmp_path_factory.mktemp("torchserve"))
    try:
        yield server
    finally:
        server.mar("serve", "stop")


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server in a process of its own, authentication on, with a bucket `models`."""
    from tests.servers import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    try:
        server.client().create_bucket(Bucket="models")
        yield server
    finally:
        server.stop()
