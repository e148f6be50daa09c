"""Start and stop the TorchServe that a config.properties file describes.

TorchServe writes a snapshot of its registered models to `logs/config/` after every change. `start`
restores the newest one: models, versions, default versions and worker settings come back without
re-registration (TorchServe only restores by itself when started without a config file). Before
TorchServe starts, each archive the snapshot would load has its signature checked again where the
host trusts keys (mar.yaml): one that fails is left out, with the reason, and the others load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dataclasses import dataclass, field

from handlers.errors import IntegrityError, ServerError
from handlers.spec import version_key
from scripts.client import TorchServeClient
from scripts.config import ServerConfig
from scripts.settings import MarSettings

__all__ = ["start_server", "stop_server", "Restored", "RestoredModel"]


@dataclass(frozen=True)
class RestoredModel:
    name: str
    version: str
    default: bool
    state: str  # its signature's, or why it was left out

    def __str__(self) -> str:
        return f"{self.name} {self.version}{' (default)' if self.default else ''}: {self.state}"


@dataclass(frozen=True)
class Restored:
    """What `start_server` brought back from the last snapshot, and what it left out."""
    loaded: list[RestoredModel] = field(default_factory=list)
    refused: list[RestoredModel] = field(default_factory=list)


def start_server(config: ServerConfig, *, timeout_s: float = 300.0, restore: bool = True,
                 env: dict[str, str] | None = None, torchserve: Path | None = None) -> Restored:
    """`torchserve --start` in the config's folder, then wait until `/ping` answers Healthy
    (with restored models: until their workers are up).

    Restores the models of the newest snapshot unless `restore` is False, each archive's signature
    checked first (scripts/repository/installed.py). `env` adds variables for the server (a
    private TMPDIR/TEMP, say); `torchserve` is another environment's (its workers run there)."""
    client = TorchServeClient(config)
    if client.ping_status() is not None:
        raise ServerError(f"a server already answers at {config.inference_url}. "
                       "Stop it first (`mar serve stop`) or use another --config.")
    if not config.model_store.is_dir():
        config.model_store.mkdir(parents=True)
    config.key_file.unlink(missing_ok=True)  # a stale file would hold last run's tokens
    startup_config, restored = config.path, Restored()
    snapshot = _latest_snapshot(config) if restore else None
    if snapshot:
        startup_config, restored = _restoring_config(config, snapshot)
    _torchserve("--start", "--ts-config", str(startup_config), cwd=config.workdir, env=env,
                executable=torchserve)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if config.key_file.exists() and client.ping_status() == "Healthy" and \
                _restored_workers_ready(client, restored.loaded):
            return restored
        time.sleep(0.3)
    raise ServerError(f"TorchServe did not become healthy at {config.inference_url} within "
                   f"{timeout_s:.0f} s. Read {config.workdir / 'logs' / 'ts_log.log'} for the cause "
                   "(a port already in use, or Java missing).")


def stop_server(config: ServerConfig, *, timeout_s: float = 60.0,
                env: dict[str, str] | None = None, torchserve: Path | None = None) -> None:
    """`torchserve --stop` (with the `env` it was started with), then wait until the inference
    port stops answering and the server process has exited (it writes logs until it does, so a
    folder removed before then is not empty)."""
    server_pid = _server_pid(env)
    _torchserve("--stop", cwd=config.workdir, env=env, executable=torchserve)
    client = TorchServeClient(config)
    deadline = time.monotonic() + timeout_s
    while client.ping_status() is not None or _alive(server_pid):
        if time.monotonic() > deadline:
            raise ServerError(f"TorchServe still runs for {config.inference_url} {timeout_s:.0f} s "
                           "after --stop. Was it started with another TMPDIR? Stop that process.")
        time.sleep(0.1)


def _server_pid(env: dict[str, str] | None) -> int | None:
    """The pid TorchServe keeps in $TMPDIR/.model_server.pid, if any."""
    tmp = (env or {}).get("TMPDIR") or os.environ.get("TMPDIR") or tempfile.gettempdir()
    try:
        return int((Path(tmp) / ".model_server.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    """Whether `pid` runs (an exited process no one has reaped yet does not)."""
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)  # no /proc (macOS)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")


def _restored_workers_ready(client: TorchServeClient, restored: list[RestoredModel]) -> bool:
    """Whether every restored version has its minimum of READY workers (/ping can say Healthy
    before the workers of restored models are up)."""
    for restored_model in restored:
        for model in client.describe(restored_model.name, restored_model.version):
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


def _restoring_config(config: ServerConfig, snapshot: dict) -> tuple[Path, Restored]:
    """config.properties plus the snapshot's models whose archives pass their signature check,
    as TorchServe's startup config."""
    missing = [settings["marName"] for versions in snapshot["models"].values()
               for settings in versions.values()
               if not (config.model_store / settings["marName"]).exists()]
    if missing:
        raise ServerError(f"cannot restore the models registered at the last stop: "
                       f"{', '.join(missing)} no longer in {config.model_store}. Rebuild them, or "
                       "start empty with `mar serve start --no-restore`.")
    models, states, refused = {}, {}, []
    check = _signature_check(config)
    for name, versions in snapshot["models"].items():
        for version, settings in versions.items():
            try:
                states[name, version] = check(config.model_store / settings["marName"])
            except IntegrityError as err:
                refused.append(RestoredModel(name, version, settings.get("defaultVersion", False),
                                             str(err)))
                continue
            models.setdefault(name, {})[version] = settings
    for name, versions in models.items():
        if not any(s.get("defaultVersion") for s in versions.values()):
            newest = max(versions, key=version_key)  # its default was left out
            versions[newest] = {**versions[newest], "defaultVersion": True}
    restored = Restored([RestoredModel(name, version, bool(settings.get("defaultVersion")),
                                       states[name, version])
                         for name, versions in models.items()
                         for version, settings in versions.items()], refused)
    kept = {**snapshot, "models": models,
            "modelCount": sum(len(versions) for versions in models.values())}
    path = config.workdir / "logs" / "mar-restore.properties"
    path.write_text(config.path.read_text().rstrip("\n") + "\n# added by mar serve start\n"
                    f"model_snapshot={json.dumps(kept)}\n")
    return path, restored


def _signature_check(config: ServerConfig):
    from scripts.repository import TrustedKeys, check_installed

    settings = MarSettings.beside(config.path)
    trust = TrustedKeys(settings.trusted_keys)
    return lambda archive: check_installed(archive, trust, require_signed=settings.require_signed)



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


def _torchserve(*args: str, cwd, env: dict[str, str] | None = None,
                executable: Path | None = None) -> None:
    if not _java_found():
        raise ServerError("TorchServe's frontend needs Java 17: `java` is not on PATH and JAVA_HOME "
                       "does not point at one. Install it, "
                       "e.g. `sudo apt-get install openjdk-17-jre-headless` (Debian/Ubuntu) or "
                       "`brew install openjdk@17` (macOS), then retry.")
    # The Java server inherits stdout/stderr: send them to a file, not a pipe that never closes.
    output = cwd / "logs" / "torchserve_cli.log"
    output.parent.mkdir(exist_ok=True)
    with output.open("w") as sink:
        code = subprocess.call([str(executable or _torchserve_executable()), *args], cwd=cwd, stdout=sink,
                               stderr=subprocess.STDOUT, timeout=120,
                               env={**os.environ, **(env or {})})
    if code != 0:
        raise ServerError(f"torchserve {' '.join(args)} failed with exit code {code}: "
                       f"{output.read_text().strip()[-2000:]}")
