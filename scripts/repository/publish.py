"""`mar publish`: an archive built here into a repository, signed when given a key.

Order, so a reader never sees a partial version: refuse a version that exists; sign (hashing
every file once); upload the archive, its signature and a copy of its build record; then write
`version.json`, create-only, which commits the version. A publish killed before that leaves
objects no pull or listing sees, and publishing the version again replaces them.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from handlers.errors import RepositoryError
from handlers.hashing import sha256_bytes, sha256_file
from handlers.records import BUILD_RECORD_FILE, BuildRecord
from scripts.archive import Archive, check_streamable, open_archive
from scripts.repository.published import (PublishedFile, PublishedVersion, version_prefix,
                                          write_index)
from scripts.repository.signing import sign
from scripts.repository.stores import Store, open_store

__all__ = ["publish", "publish_folder", "Published", "archive_files", "build_summary"]


@dataclass(frozen=True)
class Published:
    record: PublishedVersion
    address: str  # the version folder's address
    index_error: str | None  # the version is committed; only the HTTPS index missed it


def publish(archive_path: Path, address: str, *, sign_key: Path | None = None) -> Published:
    """Publish the archive (a .mar or an archive folder) to the repository at `address`.
    Raises RepositoryError (the version exists, the store refuses) or MarError for the archive."""
    archive = open_archive(archive_path.resolve())
    if not archive.is_folder:
        check_streamable(archive.path)
    store = open_store(address)
    store.require_writable()
    prefix = version_prefix(archive.name, archive.version)
    if store.exists(f"{prefix}/{PublishedVersion.FILE}"):
        raise RepositoryError(
            f"{store.url(prefix)} exists: published versions never change. Give the spec a new "
            f"`version` (e.g. {_next(archive.version)}), build it, and publish that.")
    record_bytes = archive.read(BUILD_RECORD_FILE)
    record = BuildRecord.from_bytes(record_bytes, f"{archive.path}/{BUILD_RECORD_FILE}")
    with tempfile.TemporaryDirectory(prefix="mar-publish-") as scratch:
        signature = Path(scratch) / f"{archive.path.name}.sig"
        signed = sign(archive.path, sign_key, signature) if sign_key else None
        digests = signed.digests if signed else _digests(archive.path)
        files = {key: PublishedFile(path.stat().st_size, digests[relative])
                 for key, path, relative in archive_files(archive)}
        for key, path, _ in archive_files(archive):
            store.put_file(f"{prefix}/{key}", path)
        files[BUILD_RECORD_FILE] = _put(store, f"{prefix}/{BUILD_RECORD_FILE}", record_bytes)
        if signed:
            files[signature.name] = _put(store, f"{prefix}/{signature.name}", signature.read_bytes())
        published = PublishedVersion(
            name=archive.name, version=archive.version, archive=archive.path.name,
            archive_format="folder" if archive.is_folder else "mar", files=files,
            signature=signature.name if signed else None,
            signer=signed.fingerprint if signed else None,
            published_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            build=build_summary(record))
    try:
        store.put_bytes(f"{prefix}/{PublishedVersion.FILE}", published.to_bytes(), exclusive=True)
    except RepositoryError as err:
        raise RepositoryError(f"{err}: another publish of {archive.name} {archive.version} "
                              "committed first. Versions never change; build a new version."
                              if "exists already" in str(err) else str(err)) from None
    return Published(published, store.url(prefix), _indexed(store))


def publish_folder(folder: Path, address: str, *, commit: str) -> None:
    """Upload every file of `folder` under `address`, the file `commit` last and create-only (a
    KServe layout: its signature). A layout that was completed once is never overwritten."""
    store = open_store(address)
    store.require_writable()
    if store.exists(commit):
        raise RepositoryError(f"{store.url(commit)} exists: a layout published there never "
                              "changes. Publish to a new address (e.g. one per version).")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = path.relative_to(folder).as_posix()
        if key != commit:
            store.put_file(key, path)
    store.put_bytes(commit, (folder / commit).read_bytes(), exclusive=True)


def archive_files(archive: Archive) -> list[tuple[str, Path, str]]:
    """(key under the version folder, local file, path in the signed manifest) per file."""
    if not archive.is_folder:
        return [(archive.path.name, archive.path, ".")]
    return [(f"{archive.path.name}/{path.relative_to(archive.path).as_posix()}", path,
             path.relative_to(archive.path).as_posix())
            for path in sorted(archive.path.rglob("*")) if path.is_file()]


def build_summary(record: BuildRecord) -> dict:
    """The build facts a listing shows, from the build record."""
    runtime = record.runtime or {}
    return {"arch": record.model.get("arch"), "git_commit": (record.source or {}).get("git_commit"),
            "uncommitted_changes": (record.source or {}).get("uncommitted_changes"),
            "torch_version": record.torch_version, "runtime": runtime.get("name", "eager"),
            "precision": record.golden.get("precision"),
            "accuracy": ((record.precision or {}).get("gate") or {}).get("figures")}


def _digests(path: Path) -> dict[str, str]:
    """Without a signature, the same digests model-signing would list."""
    if path.is_file():
        return {".": sha256_file(path)}
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in path.rglob("*") if p.is_file()}


def _put(store: Store, key: str, data: bytes) -> PublishedFile:
    store.put_bytes(key, data)
    return PublishedFile(len(data), sha256_bytes(data))


def _indexed(store: Store) -> str | None:
    try:
        write_index(store)
    except RepositoryError as err:
        return str(err)
    return None


def _next(version: str) -> str:
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if last.isdigit() and head else f"{version}.1"
