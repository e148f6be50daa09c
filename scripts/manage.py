"""Register and unregister archives on a running TorchServe, reporting worker failures in full.

When a worker fails to start, TorchServe answers only "Failed to start workers" and keeps the model
registered with zero workers. `register_archive` reads the worker's real error from the model log and
removes that registration, so a failed register leaves the server as it found it.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from scripts.client import TorchServeClient
from scripts.config import ServerConfig
from scripts.errors import MarError
from scripts.verify import verify_archive

__all__ = ["ArchiveInfo", "read_archive_info", "register_archive", "worker_error"]

# Model log lines look like: "2026-11-29T22:00:00,123 [INFO ] W-9000-digits_1.0-stdout MODEL_LOG - text"
_LOG_LINE = re.compile(r"W-\d+-(?P<model>.+?)_(?P<version>[^_\s]+)-std(?:out|err) MODEL_LOG - (?P<text>.*)")


@dataclass(frozen=True)
class ArchiveInfo:
    name: str
    version: str


def read_archive_info(archive: Path) -> ArchiveInfo:
    """The model name and version in an archive's (or archive folder's) MAR-INF/MANIFEST.json."""
    try:
        if archive.is_dir():
            manifest = json.loads((archive / "MAR-INF" / "MANIFEST.json").read_text())
        else:
            with zipfile.ZipFile(archive) as mar:
                manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    except FileNotFoundError:
        raise MarError(f"no archive at {archive}. Build it first: `mar build SPEC.yaml`.") from None
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise MarError(f"{archive} is not a model archive ({err}). Rebuild it with `mar build`.") from None
    return ArchiveInfo(manifest["model"]["modelName"], manifest["model"]["modelVersion"])


def register_archive(config: ServerConfig, archive: Path, *, workers: int) -> ArchiveInfo:
    """Verify `archive` offline, then register it (it must be in the server's model store).

    On failure, removes the zero-worker registration TorchServe leaves and raises MarError with the
    worker's own error from the model log.
    """
    archive = archive.resolve()
    info = read_archive_info(archive)
    verdict = verify_archive(archive)
    if not verdict.ok:
        raise MarError(f"{archive} failed offline verification, so it was not registered:\n"
                       f"{verdict.report}")
    store = config.model_store.resolve()
    if archive.parent != store:
        raise MarError(f"{archive} is not in the server's model store {store}; TorchServe loads "
                       f"archives from there only. Build into it (`mar build SPEC --export-path "
                       f"{store}`) or copy the archive there.")
    client = TorchServeClient(config)
    log_offset = _log_size(config.model_log)
    response = client.register(archive.name, initial_workers=workers)
    if response.status == 200:
        return info
    if _is_registered(client, info):
        client.unregister(info.name, info.version)
        cause = worker_error(_read_from(config.model_log, log_offset), info)
        raise MarError(f"TorchServe registered {info.name} {info.version} but its worker failed to "
                       f"start, so the registration was removed. TorchServe said: "
                       f"{response.message}. The worker's error:\n{cause}")
    raise MarError(f"TorchServe refused {archive.name} (HTTP {response.status}): {response.message}")


def worker_error(log_text: str, info: ArchiveInfo) -> str:
    """The first traceback a worker of this model printed in `log_text`, without log prefixes.

    The first one is the load failure; TorchServe's worker then prints a second, generic one
    ("500 - Unknown exception") after "Backend worker process died.".
    """
    lines = [m["text"] for m in _LOG_LINE.finditer(log_text)
             if m["model"] == info.name and m["version"] == info.version]
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), None)
    if start is None:
        return "\n".join(lines[-20:]) or "(the model log holds no output from this model's worker)"
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith(("Traceback", "Backend worker process died"))), len(lines))
    return "\n".join(lines[start:end])


def _is_registered(client: TorchServeClient, info: ArchiveInfo) -> bool:
    return any(m.get("modelName") == info.name for m in client.list_models()) and any(
        d.get("modelVersion") == info.version for d in client.describe(info.name))


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _read_from(path: Path, offset: int) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as log:
        log.seek(offset if path.stat().st_size >= offset else 0)  # the log may have rotated
        return log.read().decode(errors="replace")
