"""A real TorchServe for the integration tests, on free ports, in a private folder.

The server gets its own TMPDIR/TEMP (TorchServe keeps its pid file and worker sockets there), so it
never touches, or stops, a server the user is running.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from scripts.config import ServerConfig, private_env, read_config, write_private_config
from tests.conftest import run_mar


@dataclass(frozen=True)
class ServerUnderTest:
    config: ServerConfig
    env: dict[str, str]

    def mar(self, *args, check: bool = True):
        """Run `mar` against this server (its --config and environment)."""
        return run_mar(*args, "--config", self.config.path, env=self.env, check=check)


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("torchserve")
    server = ServerUnderTest(read_config(write_private_config(workdir)), private_env(workdir))
    server.mar("serve", "start")
    try:
        yield server
    finally:
        server.mar("serve", "stop")
