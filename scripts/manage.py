"""Register, scale and promote archives on a running TorchServe, safely for a server under traffic.

When a worker fails to start, TorchServe answers only "Failed to start workers" and keeps the model
registered with zero workers. `register_archive` reads the worker's real error from the model log and
removes that registration, so a failed register leaves the server as it found it. `promote` builds on
it: the new version serves only after it passed its golden check through the server.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

from handlers.integrity import GOLDEN_FILE, SPEC_FILE
from handlers.spec import ModelSpec, ServingSpec, parse_spec
from scripts.client import TorchServeClient
from scripts.config import ServerConfig
from scripts.errors import MarError
from scripts.verify import verify_archive

__all__ = ["Archive", "ArchiveInfo", "open_archive", "register_archive", "promote", "worker_error"]

# Model log lines look like: "2026-11-29T22:00:00,123 [INFO ] W-9000-digits_1.0-stdout MODEL_LOG - text"
_LOG_LINE = re.compile(r"W-\d+-(?P<model>.+?)_(?P<version>[^_\s]+)-std(?:out|err) MODEL_LOG - (?P<text>.*)")


@dataclass(frozen=True)
class ArchiveInfo:
    name: str
    version: str


@dataclass(frozen=True)
class Archive:
    """An archive in a model store, with the spec it carries."""
    path: Path
    info: ArchiveInfo
    spec: ModelSpec

    def read(self, member: str) -> bytes:
        if self.path.is_dir():
            return (self.path / member).read_bytes()
        with zipfile.ZipFile(self.path) as mar:
            return mar.read(member)


def register_archive(config: ServerConfig, archive: Path, *, workers: int | None = None,
                     serving: dict | None = None, set_default: bool = False) -> ArchiveInfo:
    """Verify `archive` offline, then register it (it must be in the server's model store).

    `workers` is the initial worker count (default: the spec's min_workers); `serving` overrides
    the spec's min_workers, max_workers, batch_size, max_batch_delay_ms. On failure, removes the
    zero-worker registration TorchServe leaves and raises MarError with the worker's own error.
    """
    opened = open_archive(archive.resolve())
    settings = _serving_settings(opened, serving or {})
    _check_in_store(config, opened.path)
    verdict = verify_archive(opened.path)
    if not verdict.ok:
        raise MarError(f"{opened.path} failed offline verification, so it was not registered:\n"
                       f"{verdict.report}")
    client = TorchServeClient(config)
    info = opened.info
    if _is_registered(client, info):
        raise MarError(f"{info.name} {info.version} is already registered. Unregister it first "
                       f"(`mar unregister {info.name} {info.version}`), or build a new version "
                       f"and `mar promote` it.")
    log_offset = _log_size(config.model_log)
    initial = workers if workers is not None else max(settings.min_workers, 1)
    response = client.register(opened.path.name, initial_workers=initial,
                               batch_size=settings.batch_size,
                               max_batch_delay_ms=settings.max_batch_delay_ms)
    if response.status != 200:
        _fail_registration(config, client, info, response, log_offset)
    _check(client.scale(info.name, info.version, min_workers=settings.min_workers,
                        max_workers=settings.max_workers), f"scaling {info.name} {info.version}")
    if set_default:
        _check(client.set_default(info.name, info.version), f"making {info.version} the default")
    return info


def promote(config: ServerConfig, archive: Path, *, drain_s: float = 2.0) -> tuple[str, str]:
    """Serve `archive` as the new default version of its model, then retire the old default.

    Order: register beside the serving version, wait for its workers, run its golden batch
    through the server, make it the default, let in-flight requests drain, unregister the old one.
    On any failure before the switch, the new version is removed and the old keeps serving.
    Returns (old version, new version).
    """
    opened = open_archive(archive.resolve())
    name, new = opened.info.name, opened.info.version
    client = TorchServeClient(config)
    old = client.default_version(name)
    if old is None:
        raise MarError(f"{name} is not registered, so there is nothing to promote over. Register "
                       f"the first version with `mar register {archive}`.")
    if old == new:
        raise MarError(f"{name} {new} is already the serving version. Build the new model with "
                       "another `version` in its spec.")
    register_archive(config, opened.path)  # verified offline; workers ready when it returns
    try:
        _golden_through_server(client, opened)
        _check(client.set_default(name, new), f"making {new} the default")
    except MarError as err:
        client.unregister(name, new)
        raise MarError(f"promote of {name} {new} failed, so {new} was removed and {old} keeps "
                       f"serving: {err}") from None
    time.sleep(drain_s)  # requests routed to the old version before the switch finish first
    _check(client.unregister(name, old), f"retiring {name} {old}")
    return old, new


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


def open_archive(path: Path) -> Archive:
    """The archive at `path` (a .mar or an archive folder): its manifest's name and version and
    the spec it carries. Raises MarError when it is missing or not built by `mar build`."""
    try:
        if path.is_dir():
            manifest = json.loads((path / "MAR-INF" / "MANIFEST.json").read_text())
            spec_text = (path / SPEC_FILE).read_text()
        else:
            with zipfile.ZipFile(path) as mar:
                manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
                spec_text = mar.read(SPEC_FILE).decode()
    except FileNotFoundError:
        raise MarError(f"no archive at {path}. Build it first: `mar build SPEC.yaml`.") from None
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise MarError(f"{path} is not an archive built by `mar build` ({err}). Rebuild it.") from None
    info = ArchiveInfo(manifest["model"]["modelName"], manifest["model"]["modelVersion"])
    return Archive(path, info, parse_spec(yaml.safe_load(spec_text), source=path / SPEC_FILE))


_OVERRIDABLE = ("min_workers", "max_workers", "batch_size", "max_batch_delay_ms")


def _serving_settings(archive: Archive, overrides: dict) -> ServingSpec:
    """The archive's serving settings with the command line's overrides applied and checked."""
    unknown = set(overrides) - set(_OVERRIDABLE) - {"response_timeout_s"}
    if unknown:
        raise MarError(f"cannot override {', '.join(sorted(unknown))} at registration.")
    given = {k: v for k, v in overrides.items() if v is not None}
    timeout = given.pop("response_timeout_s", archive.spec.serving.response_timeout_s)
    if timeout != archive.spec.serving.response_timeout_s:
        raise MarError(
            f"TorchServe takes the response timeout from the archive's model-config.yaml "
            f"({archive.spec.serving.response_timeout_s} s) and ignores the register call's value, "
            f"so --response-timeout {timeout} cannot apply. Set serving.response_timeout_s in the "
            "spec and rebuild.")
    settings = replace(archive.spec.serving, **given)
    if settings.min_workers > settings.max_workers:
        raise MarError(f"min workers ({settings.min_workers}) exceed max workers "
                       f"({settings.max_workers}); raise --max-workers.")
    return settings


def _check_in_store(config: ServerConfig, archive: Path) -> None:
    store = config.model_store.resolve()
    if archive.parent != store:
        raise MarError(f"{archive} is not in the server's model store {store}; TorchServe loads "
                       f"archives from there only. Build into it (`mar build SPEC --export-path "
                       f"{store}`) or copy the archive there.")


def _fail_registration(config, client, info, response, log_offset) -> None:
    # Only a worker that failed to start leaves a registration behind, and it is ours to remove.
    if response.status == 500 and "Failed to start workers" in response.message and \
            _is_registered(client, info):
        client.unregister(info.name, info.version)
        cause = _worker_traceback(config, info, log_offset)
        raise MarError(f"TorchServe registered {info.name} {info.version} but its worker failed to "
                       f"start, so the registration was removed. TorchServe said: "
                       f"{response.message}. The worker's error:\n{cause}")
    raise MarError(f"TorchServe refused {info.name} {info.version} (HTTP {response.status}): "
                   f"{response.message}")


def _worker_traceback(config: ServerConfig, info: ArchiveInfo, log_offset: int) -> str:
    """The worker's error from the model log; TorchServe writes that log asynchronously, so the
    traceback may land a moment after the register call has answered."""
    deadline = time.monotonic() + 5
    while True:
        cause = worker_error(_read_from(config.model_log, log_offset), info)
        if cause.startswith("Traceback") or time.monotonic() > deadline:
            return cause
        time.sleep(0.2)


def _golden_through_server(client: TorchServeClient, archive: Archive) -> None:
    """The archive's golden batch through /predictions/<name>/<version>, within its tolerance."""
    golden = torch.load(io.BytesIO(archive.read(GOLDEN_FILE)), weights_only=True)
    body = json.dumps({"inputs": golden["inputs"].float().tolist()}).encode()
    response = client.predict(archive.info.name, body, version=archive.info.version)
    if response.status != 200:
        raise MarError(f"the golden batch got HTTP {response.status}: {response.message}")
    served = torch.tensor(response.json()["outputs"])
    expected = golden["outputs"].float()
    if served.shape != expected.shape or not torch.allclose(
            served, expected, rtol=float(golden["rtol"]), atol=float(golden["atol"])):
        error = float((served - expected).abs().max()) if served.shape == expected.shape else "shape"
        raise MarError(f"the golden check through the server failed (max abs error {error}).")


def _check(response, action: str) -> None:
    if response.status != 200:
        raise MarError(f"{action} failed (HTTP {response.status}): {response.message}")


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
