"""Which TorchServe a `mar` command talks to: one `config.properties` file names one server.

TorchServe runs in the folder that holds its config file: its `key_file.json` (the API tokens),
`logs/` and a relative `model_store` all live there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from scripts.errors import MarError

__all__ = ["ServerConfig", "read_config", "REPO_ROOT", "DEFAULT_CONFIG"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "config.properties"


@dataclass(frozen=True)
class ServerConfig:
    path: Path  # the config.properties file
    inference_url: str
    management_url: str
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
        except FileNotFoundError:
            raise MarError(f"{self.key_file} does not exist, so TorchServe for {self.path} is not "
                           "running (it writes the file at start). Start it with `mar serve start`."
                           ) from None
        return keys[kind]["key"]


def read_config(path: str | Path = DEFAULT_CONFIG) -> ServerConfig:
    """Parse the addresses and model store out of a TorchServe config.properties file."""
    path = Path(path).resolve()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise MarError(f"no TorchServe config at {path}. Pass --config PATH to a "
                       "config.properties (the repo's is the default).") from None
    props = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    missing = [k for k in ("inference_address", "management_address", "model_store") if k not in props]
    if missing:
        raise MarError(f"{path} lacks {', '.join(missing)}; copy those lines from the repo's "
                       "config.properties.")
    store = Path(props["model_store"])
    return ServerConfig(path=path,
                        inference_url=_loopback(props["inference_address"]),
                        management_url=_loopback(props["management_address"]),
                        model_store=store if store.is_absolute() else path.parent / store)


def _loopback(address: str) -> str:
    """An address TorchServe binds (maybe 0.0.0.0) as a URL a client on this host can call."""
    parts = urlsplit(address)
    host = "127.0.0.1" if parts.hostname in (None, "0.0.0.0") else parts.hostname
    return f"{parts.scheme or 'http'}://{host}:{parts.port}"
