"""Register and promote archives on a running TorchServe, safely for a server under traffic.

Before anything of an archive runs (even `mar verify`, which imports its handler), its signature is
checked again where the host trusts keys (mar.yaml). When a worker fails to start, TorchServe
answers only "Failed to start workers", and may or may not keep the model registered with zero
workers. `register_archive` shows the worker's own error from
the model log and removes any such registration, so a failed register leaves the server as it found
it. `promote` builds on it: the new version serves only after it passed its golden check through
the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from handlers.errors import IntegrityError, MarError, ServerError, TorchServeError, UsageError
from handlers.records import GOLDEN_FILE, GoldenRecord
from scripts.archive import Archive, open_archive
from scripts.client import TorchServeClient, our_outputs, our_request
from scripts.config import ServerConfig
from scripts.model_log import ModelLog
from scripts.settings import MarSettings
from scripts.verify import verify_archive

__all__ = ["register_archive", "promote", "Registered"]


@dataclass(frozen=True)
class Registered:
    archive: Archive
    signature: str  # how its signature stands: "unsigned", "signed by ..., verified", ...


def register_archive(config: ServerConfig, archive: Path, *, workers: int | None = None,
                     serving: dict | None = None, set_default: bool = False) -> Registered:
    """Check its signature, verify `archive` offline, then register it (it must be in the
    server's model store).

    `workers` is the initial worker count (default: the spec's min_workers); `serving` overrides
    the spec's min_workers, max_workers, batch_size, max_batch_delay_ms. On failure, removes any
    zero-worker registration TorchServe left and raises MarError with the worker's own error.
    """
    opened = open_archive(archive.resolve())
    settings = opened.spec.serving.overridden(**_overrides(opened, serving or {}))
    _check_in_store(config, opened.path)
    signature = _signature_state(config, opened.path)
    verdict = verify_archive(opened.path)
    if not verdict.ok:
        raise IntegrityError(f"{opened.path} failed offline verification, so it was not registered:\n"
                       f"{verdict.report}")
    client = TorchServeClient(config)
    if client.is_registered(opened.name, opened.version):
        raise ServerError(f"{opened.name} {opened.version} is already registered. Unregister it first "
                       f"(`mar unregister {opened.name} {opened.version}`), or build a new version "
                       f"and `mar promote` it.")
    log = ModelLog(config.model_log)
    response = client.register(opened.path.name, serving=settings, initial_workers=workers,
                               check=False)
    if not response.ok:
        _fail_registration(client, opened, response, log)
    client.scale(opened.name, opened.version, min_workers=settings.min_workers,
                 max_workers=settings.max_workers)
    if set_default:
        client.set_default(opened.name, opened.version)
    return Registered(opened, signature)


def promote(config: ServerConfig, archive: Path, *, drain_s: float = 2.0) -> tuple[str, str]:
    """Serve `archive` as the new default version of its model, then retire the old default.

    Order: register beside the serving version, wait for its workers, run its golden batch
    through the server, make it the default, let in-flight requests drain, unregister the old one.
    On any failure before the switch, the new version is removed and the old keeps serving.
    Returns (old version, new version).
    """
    opened = open_archive(archive.resolve())
    name, new = opened.name, opened.version
    client = TorchServeClient(config)
    old = client.default_version(name)
    if old is None:
        raise ServerError(f"{name} is not registered, so there is nothing to promote over. Register "
                       f"the first version with `mar register {archive}`.")
    if old == new:
        raise ServerError(f"{name} {new} is already the serving version. Build the new model with "
                       "another `version` in its spec.")
    register_archive(config, opened.path)  # verified offline; workers ready when it returns
    try:
        _golden_through_server(client, opened)
        client.set_default(name, new)
    except MarError as err:
        client.unregister(name, new, check=False)
        raise ServerError(f"promote of {name} {new} failed, so {new} was removed and {old} keeps "
                       f"serving: {err}") from None
    time.sleep(drain_s)  # requests routed to the old version before the switch finish first
    client.unregister(name, old)
    return old, new


_OVERRIDABLE = ("min_workers", "max_workers", "batch_size", "max_batch_delay_ms")


def _overrides(archive: Archive, overrides: dict) -> dict:
    """The command line's serving overrides; the response timeout only where it changes nothing."""
    unknown = set(overrides) - set(_OVERRIDABLE) - {"response_timeout_s"}
    if unknown:
        raise UsageError(f"cannot override {', '.join(sorted(unknown))} at registration.")
    timeout = overrides.get("response_timeout_s")
    recorded = archive.spec.serving.response_timeout_s
    if timeout is not None and timeout != recorded:
        raise UsageError(
            f"TorchServe takes the response timeout from the archive's model-config.yaml "
            f"({recorded} s) and ignores the register call's value, so --response-timeout "
            f"{timeout} cannot apply. Set serving.response_timeout_s in the spec and rebuild.")
    return {key: overrides.get(key) for key in _OVERRIDABLE}


def _signature_state(config: ServerConfig, archive: Path) -> str:
    from scripts.repository import TrustedKeys, check_installed

    settings = MarSettings.beside(config.path)
    try:
        return check_installed(archive, TrustedKeys(settings.trusted_keys),
                               require_signed=settings.require_signed)
    except IntegrityError as err:
        raise IntegrityError(f"{err} It was not registered.") from None


def _check_in_store(config: ServerConfig, archive: Path) -> None:
    store = config.model_store.resolve()
    if archive.parent != store:
        raise ServerError(f"{archive} is not in the server's model store {store}; TorchServe loads "
                       f"archives from there only. Build into it (`mar build SPEC --export-path "
                       f"{store}`) or copy the archive there.")


def _fail_registration(client: TorchServeClient, archive: Archive, response, log: ModelLog) -> None:
    """Raise with the worker's own error when its start failed (removing any zero-worker
    registration TorchServe keeps), or with TorchServe's refusal otherwise."""
    if response.status != 500 or "Failed to start workers" not in response.message:
        raise TorchServeError(f"registering {archive.name} {archive.version}", response)
    cause = log.wait_for_worker_error(archive.name, archive.version)
    removed = client.is_registered(archive.name, archive.version)
    if removed:
        client.unregister(archive.name, archive.version, check=False)
    outcome = "so the registration was removed" if removed else "and TorchServe kept no registration"
    raise ServerError(f"{archive.name} {archive.version}: its worker failed to start, {outcome}. "
                   f"TorchServe said: {response.message}. The worker's error:\n{cause}")


def _golden_through_server(client: TorchServeClient, archive: Archive) -> None:
    """The archive's golden batches through /predictions/<name>/<version>, within tolerance."""
    golden = GoldenRecord.from_bytes(archive.read(GOLDEN_FILE))
    served = []
    names = [o.name for o in archive.spec.outputs]
    for inputs, _ in golden.cases:
        body = our_request({name: tensor.float() if tensor.is_floating_point() else tensor
                            for name, tensor in inputs.items()})
        response = client.predict(archive.name, body, version=archive.version, check=False)
        if not response.ok:
            raise IntegrityError(f"the golden batch got HTTP {response.status}: {response.message}")
        served.append({name: torch.tensor(value) for name, value in our_outputs(response, names).items()})
    result = golden.compare(served)
    if not result.within:
        raise IntegrityError(f"the golden check through the server failed (max abs error "
                       f"{result.max_error:.3g}: {result.describe()}).")
