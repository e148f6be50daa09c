"""Start and stop the TorchServe that a config.properties file describes.

TorchServe writes a snapshot of its registered models to `logs/config/` after every change. `start`
restores the newest one: models, versions, default versions and worker settings come back without
re-registration (TorchServe only restores by itself when started without a config file).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scripts.client import TorchServeClient
from scripts.config import ServerConfig
from handlers.errors import ServerError

__all__ = ["start_server", "stop_server"]


def start_server(config: ServerConfig, *, timeout_s: float = 300.0, restore: bool = True,
                 env: dict[str, str] | None = None) -> list[str]:
    """`torchserve --start` in the config's folder, then wait until `/ping` answers Healthy
    (with restored models: until their workers are up).

    Restores the models of the newest snapshot unless `restore` is False; returns them as
    "name version" lines. `env` adds variables for the server (a private TMPDIR/TEMP, say)."""
    client = TorchServeClient(config)
    if client.ping_status() is not None:
        raise ServerError(f"a server already answers at {config.inference_url}. "
                       "Stop it first (`mar serve stop`) or use another --config.")
    if not config.model_store.is_dir():
        config.model_store.mkdir(parents=True)
    config.key_file.unlink(missing_ok=True)  # a stale file would hold last run's tokens
    startup_config, restored = config.path, []
    snapshot = _latest_snapshot(config) if restore else None
    if snapshot:
        startup_config, restored = _restoring_config(config, snapshot)
    _torchserve("--start", "--ts-config", str(startup_config), cwd=config.workdir, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if config.key_file.exists() and client.ping_status() == "Healthy" and \
                _restored_workers_ready(client, restored):
            return restored
        time.sleep(0.3)
    raise ServerError(f"TorchServe did not become healthy at {config.inference_url} within "
                   f"{timeout_s:.0f} s. Read {config.workdir / 'logs' / 'ts_log.log'} for the cause "
                   "(a port already in use, or Java missing).")


def stop_server(config: ServerConfig, *, timeout_s: float = 60.0,
                env: dict[str, str] | None = None) -> None:
    """`torchserve --stop` (with the `env` it was started with), then wait until the inference
    port stops answering."""
    _torchserve("--stop", cwd=config.workdir, env=env)
    client = TorchServeClient(config)
    deadline = time.monotonic() + timeout_s
    while client.ping_status() is not None:
        if time.monotonic() > deadline:
            raise ServerError(f"TorchServe still answers at {config.inference_url} {timeout_s:.0f} s "
                           "after --stop. Was it started with another TMPDIR? Stop that process.")
        time.sleep(0.3)


def _restored_workers_ready(client: TorchServeClient, restored: list[str]) -> bool:
    """Whether every restored version has its minimum of READY workers (/ping can say Healthy
    before the workers of restored models are up)."""
    for line in restored:
        name, version = line.split()[:2]
        for model in client.describe(name, version):
            ready = sum(1 for w in model.get("workers", []) if w.get("status") == "READY")
            if ready < model.get("minWorkers", 1):
                return False
    return True


def _latest_snapshot(config: ServerConfig) -> dict | None:
    """The model_snapshot of the newest TorchServe snapshot file, if one lists any model."""
    folder = config.workdir / "logs" / "config"
    for path in sorted(folder.glob("*.cfg"), reverse=True):  # names start with a timestamp
        for line in path.read_text().splitlines():
            if line.startswith("model_snapshot="):
                snapshot = json.loads(_unescape_property(line.split("=", 1)[1]))
                return snapshot if snapshot.get("models") else None
    return None


def _unescape_property(value: str) -> str:
    """A java.util.Properties value as written (TorchServe escapes ':' and newlines)."""
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", lambda m: chr(int(m[1][1:], 16)) if len(m[1]) == 5
                  else {"n": "\n", "t": "\t", "r": "\r", "f": "\f"}.get(m[1], m[1]), value)


def _restoring_config(config: ServerConfig, snapshot: dict) -> tuple[Path, list[str]]:
    """config.properties plus the snapshot's models, as TorchServe's startup config."""
    restored, missing = [], []
    for name, versions in snapshot["models"].items():
        for version, settings in versions.items():
            if not (config.model_store / settings["marName"]).exists():
                missing.append(settings["marName"])
            default = " (default)" if settings.get("defaultVersion") else ""
            restored.append(f"{name} {version}{default}")
    if missing:
        raise ServerError(f"cannot restore the models registered at the last stop: "
                       f"{', '.join(missing)} no longer in {config.model_store}. Rebuild them, or "
                       "start empty with `mar serve start --no-restore`.")
    path = config.workdir / "logs" / "mar-restore.properties"
    path.write_text(config.path.read_text().rstrip("\n") + "\n# added by mar serve start\n"
                    f"model_snapshot={json.dumps(snapshot)}\n")
    return path, restored


def _torchserve_executable() -> str:
    """The torchserve beside this Python (so its workers run in the same environment), else PATH's."""
    beside = Path(sys.executable).parent / "torchserve"
    found = str(beside) if beside.exists() else shutil.which("torchserve")
    if found is None:
        raise ServerError("`torchserve` is not installed in this environment. Run `make setup` and "
                       "use .venv/bin/mar (or `source .venv/bin/activate`).")
    return found


def _java_found() -> bool:
    """TorchServe's CLI runs $JAVA_HOME/bin/java when JAVA_HOME is set, else PATH's java."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        return (Path(java_home) / "bin" / "java").exists()
    return shutil.which("java") is not None


def _torchserve(*args: str, cwd, env: dict[str, str] | None = None) -> None:
    if not _java_found():
        raise ServerError("TorchServe's frontend needs Java 17: `java` is not on PATH and JAVA_HOME "
                       "does not point at one. Install it, "
                       "e.g. `sudo apt-get install openjdk-17-jre-headless` (Debian/Ubuntu) or "
                       "`brew install openjdk@17` (macOS), then retry.")
    # The Java server inherits stdout/stderr: send them to a file, not a pipe that never closes.
    output = cwd / "logs" / "torchserve_cli.log"
    output.parent.mkdir(exist_ok=True)
    with output.open("w") as sink:
        code = subprocess.call([_torchserve_executable(), *args], cwd=cwd, stdout=sink,
                               stderr=subprocess.STDOUT, timeout=120,
                               env={**os.environ, **(env or {})})
    if code != 0:
        raise ServerError(f"torchserve {' '.join(args)} failed with exit code {code}: "
                       f"{output.read_text().strip()[-2000:]}")
