"""`mar pull`: a published version into this host's model store, verified before anything of it
can run.

    1. read version.json, the commit (a missing version: the versions that exist are listed)
    2. with trusted keys, check the signature bundle's envelope with the trusted key it names:
       unsigned, untrusted and badly signed versions are refused before the archive is fetched
    3. stream the archive into a staging folder inside the model store, hashing it (and each of a
       .mar's entries) as it arrives; never more bytes than were published
    4. compare: the files with the signed digests (a changed byte), with version.json (an object
       replaced after it was published), and the entries with the archive's build record
    5. rename the signature, then the archive, into the store: the archive last, in one rename
Any failure removes the staging folder, so the model store is as it was.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from handlers.errors import IntegrityError, RepositoryError
from handlers.records import BUILD_RECORD_FILE, BuildRecord
from scripts.archive import EntryDigests
from scripts.repository.published import PublishedVersion, read_published
from scripts.repository.signing import Bundle, SignedManifest, TrustedKeys, short
from scripts.repository.stores import MissingObject, Store, open_store

__all__ = ["pull", "Pulled"]


@dataclass(frozen=True)
class Pulled:
    archive: Path  # in the model store
    published: PublishedVersion
    verified_by: str | None  # the trusted key's fingerprint; None without trusted keys


def pull(address: str, name: str, version: str, *, model_store: Path,
         trust: TrustedKeys) -> Pulled:
    """Fetch `name` `version` from the repository at `address` into `model_store`, verified.
    Raises RepositoryError (the repository, the version, the disk) or IntegrityError (the
    signature, a changed byte, the build record); either way nothing is left in the store."""
    store = open_store(address)
    published = read_published(store, name, version)
    target = model_store / published.archive
    if target.exists() or target.is_symlink():
        raise RepositoryError(f"{target} is in the model store already. Pull another version, or "
                              f"remove it first (`mar unregister {name} {version}` if registered).")
    bundle, signed = _signature(store, published, trust)
    model_store.mkdir(parents=True, exist_ok=True)
    _check_space(model_store, published.size + len(bundle or b""))
    staging = Path(tempfile.mkdtemp(prefix=f".pull-{published.archive}.", dir=model_store))
    try:
        _compare(store, published, signed, _download(store, published, staging))
        if bundle is not None:
            (staging / f"{published.archive}.sig").write_bytes(bundle)
            (staging / f"{published.archive}.sig").replace(model_store / f"{published.archive}.sig")
        (staging / published.archive).rename(target)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RepositoryError(f"the model store {model_store} filled up while pulling "
                                  f"{published.archive} ({err.strerror}); nothing was kept. Free "
                                  f"{published.size:,} bytes there, or point model_store in the "
                                  "config at a larger disk.") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Pulled(target, published, signed.fingerprint if signed else None)


def _signature(store: Store, published: PublishedVersion,
               trust: TrustedKeys) -> tuple[bytes | None, SignedManifest | None]:
    """The bundle (kept beside the archive) and, with trusted keys, what it vouches for."""
    where = store.url(published.prefix)
    if published.signature is None:
        if trust:
            raise IntegrityError(
                f"unsigned: {where} has no signature, and this host accepts only archives signed "
                f"by a trusted key ({trust.describe()}). Ask its publisher to publish it with "
                "`mar publish ARCHIVE REPO --sign-key KEY.pem`.")
        return None, None
    key = f"{published.prefix}/{published.signature}"
    try:
        raw = store.read(key)
    except MissingObject:
        raise IntegrityError(f"{store.url(key)}, the signature version.json names, is missing: "
                             "the version was altered after it was published.") from None
    bundle = Bundle.parse(raw, store.url(key))
    return raw, trust.check_bundle(bundle, store.url(key)) if trust else None


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RepositoryError(f"the model store {folder} has {free:,} bytes free and the archive "
                              f"needs {needed:,}; nothing was written. Free space there, or point "
                              "model_store in the config at a larger disk.")


@dataclass(frozen=True)
class _Downloaded:
    files: dict[str, str]  # sha256 by path in the signed manifest
    entries: dict[str, str]  # sha256 by path inside the archive (a .mar's entries, or files)
    record: BuildRecord


def _download(store: Store, published: PublishedVersion, staging: Path) -> _Downloaded:
    """Every file of the archive into `staging`, hashed as it arrives; a .mar's entries hashed
    as they pass, and its build record kept from the stream."""
    where = store.url(f"{published.prefix}/{published.archive}")
    if published.archive_format == "mar":
        entries = EntryDigests(keep=(BUILD_RECORD_FILE,))
        digest = _fetch(store, f"{published.prefix}/{published.archive}",
                        staging / published.archive, published.size, entries)
        try:
            entry_digests = entries.finish()
        except IntegrityError as err:
            raise IntegrityError(f"{where}: {err}") from None
        files, raw_record = {".": digest}, entries.kept.get(BUILD_RECORD_FILE)
    else:
        files = {}
        for key, expected in sorted(published.archive_files.items()):
            (staging / key).parent.mkdir(parents=True, exist_ok=True)
            files[_relative(published, key)] = _fetch(store, f"{published.prefix}/{key}",
                                                      staging / key, expected.bytes, None)
        entry_digests = files
        record_path = staging / published.archive / BUILD_RECORD_FILE
        raw_record = record_path.read_bytes() if record_path.is_file() else None
    if raw_record is None:
        raise IntegrityError(f"{where} has no {BUILD_RECORD_FILE}: it was not built by `mar build`.")
    return _Downloaded(files, entry_digests,
                       BuildRecord.from_bytes(raw_record, f"{where}/{BUILD_RECORD_FILE}"))


def _fetch(store: Store, key: str, path: Path, size: int, entries: EntryDigests | None) -> str:
    """One object streamed to `path`, hashed as it arrives; refused past its published size."""
    digest, received = hashlib.sha256(), 0
    with open(path, "wb") as out:
        for chunk in store.stream(key):
            received += len(chunk)
            if received > size:
                raise IntegrityError(f"{store.url(key)} is larger than the {size:,} bytes "
                                     "published: it was replaced after publishing; nothing was kept.")
            digest.update(chunk)
            if entries is not None:
                entries.feed(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _compare(store: Store, published: PublishedVersion, signed: SignedManifest | None,
             downloaded: _Downloaded) -> None:
    """The signed digests first (a changed byte), then version.json (a replaced object), then
    the archive's own build record."""
    where = store.url(f"{published.prefix}/{published.archive}")
    if signed is not None:
        problems = _differences(downloaded.files, signed.digests)
        if problems:
            raise IntegrityError(f"changed bytes: {where} does not match what "
                                 f"{short(signed.fingerprint)} signed ({'; '.join(problems)}). "
                                 "It was altered after signing; nothing was kept.")
    recorded = {_relative(published, key): entry.sha256
                for key, entry in published.archive_files.items()}
    problems = _differences(downloaded.files, recorded)
    if problems:
        raise IntegrityError(f"{where} changed after it was published ({'; '.join(problems)}, "
                             "against version.json): an object was replaced between the listing "
                             "and the download, and versions never change. Nothing was kept. Ask "
                             "who writes to the repository, and pull a version published since.")
    problems = downloaded.record.differences(downloaded.entries)
    if problems:
        raise IntegrityError(f"{where} does not match its own build record "
                             f"({'; '.join(problems)}): it was altered after `mar build`. "
                             "Nothing was kept.")


def _differences(actual: dict[str, str], expected: dict[str, str]) -> list[str]:
    found = [f"{name}: sha256 {actual[name][:16]}..., expected {expected[name][:16]}..."
             for name in sorted(set(actual) & set(expected)) if actual[name] != expected[name]]
    found += [f"{name} is not covered" for name in sorted(set(actual) - set(expected))]
    found += [f"{name} is missing" for name in sorted(set(expected) - set(actual))]
    return found


def _relative(published: PublishedVersion, key: str) -> str:
    """A file's path in the signed manifest: `.` for a .mar, its path in the folder otherwise."""
    return "." if key == published.archive else key[len(published.archive) + 1:]
