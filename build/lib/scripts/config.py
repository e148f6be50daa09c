"""Which TorchServe a `mar` command talks to: one `config.properties` file names one server.

TorchServe runs in the folder that holds its config file: its `key_file.json` (the API tokens),
`logs/` and a relative `model_store` all live there.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from handlers.errors import ServerError

__all__ = ["ServerConfig", "read_config", "write_private_config", "private_env", "free_ports",
           "REPO_ROOT", "DEFAULT_CONFIG", "DEMO_SPEC"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "config.properties"
DEMO_SPEC = REPO_ROOT / "model_defs" / "specs" / "digits_cnn.yaml"  # make demo, bench, gpu_check


@dataclass(frozen=True)
class ServerConfig:
    path: Path  # the config.properties file
    inference_url: str
    management_url: str
    metrics_url: str
    model_store: Path

    @property
    def workdir(self) -> Path:
        return self.path.parent

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    @property
    def model_log(self) -> Path:
        return self.workdir / "logs" / "model_log.log"

    def key(self, kind: str) -> str:
        """The current `management` or `inference` token (TorchServe makes new ones at each start)."""
        try:
            keys = json.loads(self.key_file.read_text())
            return keys[kind]["key"]
        except FileNotFoundError:
            raise ServerError(f"{self.key_file} does not exist, so TorchServe for {self.path} is not "
                           "running (it writes the file at start). Start it with `mar serve start`."
                           ) from None
        except (ValueError, KeyError, TypeError):  # TorchServe is still writing it
            raise ServerError(f"{self.key_file} holds no {kind} key yet; retry in a moment.") from None


def read_config(path: str | Path = DEFAULT_CONFIG) -> ServerConfig:
    """Parse the addresses and model store out of a TorchServe config.properties file."""
    path = Path(path).resolve()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ServerError(f"no TorchServe config at {path}. Pass --config PATH to a "
                       "config.properties (the repo's is the default).") from None
    props = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    missing = [k for k in ("inference_address", "management_address", "model_store") if k not in props]
    if missing:
        raise ServerError(f"{path} lacks {', '.join(missing)}; copy those lines from the repo's "
                       "config.properties.")
    store = Path(props["model_store"])
    return ServerConfig(path=path,
                        inference_url=_loopback(props["inference_address"]),
                        management_url=_loopback(props["management_address"]),
                        metrics_url=_loopback(props.get("metrics_address", "http://127.0.0.1:8082")),
                        model_store=store if store.is_absolute() else path.parent / store)


def _loopback(address: str) -> str:
    """An address TorchServe binds (maybe 0.0.0.0) as a URL a client on this host can call."""
    parts = urlsplit(address)
    host = "127.0.0.1" if parts.hostname in (None, "0.0.0.0") else parts.hostname
    return f"{parts.scheme or 'http'}://{host}:{parts.port}"


def write_private_config(workdir: Path, *, base: Path = DEFAULT_CONFIG) -> Path:
    """A copy of `base` for a second server in `workdir`: free ports, its own model store.

    Tests and benchmarks start their TorchServe from this, with `private_env(workdir)`, so they
    never touch (or stop) a server the user is running.
    """
    inference, management, metrics, grpc_inference, grpc_management, worker = free_ports(6)
    overrides = {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        "initial_worker_port": str(worker),
        "model_store": str(workdir / "model_store"),
    }
    lines = []
    for line in base.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(f"{key}={overrides.pop(key)}" if key in overrides and "=" in line else line)
    lines += [f"{key}={value}" for key, value in overrides.items()]
    path = workdir / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def private_env(workdir: Path) -> dict[str, str]:
    """TMPDIR/TEMP for a private server: TorchServe keeps its pid file and worker sockets in
    TMPDIR and extracts archives under TEMP."""
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {"TMPDIR": str(tmp), "TEMP": str(tmp)}


def free_ports(count: int) -> list[int]:
    """`count` TCP ports on 127.0.0.1 that nothing listens on right now."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
