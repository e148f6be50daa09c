"""moto's standalone S3 server (`moto_server`, from `moto[server]`) on a free loopback port, in a
process of its own: what the repository benchmark and tests talk to with unmodified clients."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from handlers.errors import BenchError
from scripts.config import free_ports

__all__ = ["LoopbackS3"]


class LoopbackS3:
    """`auth_free_actions`: None serves anyone; N turns IAM authentication on after N requests
    (used to create a user first)."""

    def __init__(self, workdir: Path, *, auth_free_actions: int | None = None) -> None:
        self.workdir, self.auth_free_actions, self.process = workdir, auth_free_actions, None
        self.port = free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> "LoopbackS3":
        beside = Path(sys.executable).parent / "moto_server"
        command = str(beside) if beside.exists() else shutil.which("moto_server")
        if command is None:
            raise BenchError("the loopback S3 server is moto's: `pip install 'moto[server]'` "
                             "(`make setup` installs it with the dev extras).")
        env = dict(os.environ)
        if self.auth_free_actions is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.auth_free_actions)
        with open(self.workdir / "moto.log", "ab") as log:
            self.process = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(self.port)],
                                            env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise BenchError(f"moto_server did not listen on {self.endpoint}; see "
                                     f"{self.workdir / 'moto.log'}") from None
                time.sleep(0.05)

    def client(self, key_id: str = "bench", secret: str = "bench"):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=key_id, aws_secret_access_key=secret)

    def env(self, key_id: str = "bench", secret: str = "bench",
            endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS variables of a client of this server (through `endpoint`)."""
        return {"AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": key_id,
                "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
