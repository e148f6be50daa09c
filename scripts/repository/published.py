"""A published version, as the repository holds it:

    <name>/<version>/<name>-<version>.mar          the archive (or the folder <name>-<version>/)
    <name>/<version>/<name>-<version>.mar.sig      its signature bundle, when signed
    <name>/<version>/build-info.json               a copy of the archive's build record
    <name>/<version>/version.json                  PublishedVersion: written last, it commits
    index.json                                     names and versions, for HTTPS listings

`version.json` is the commit: a version without one is invisible (a publish that died part-way),
and it records the size and sha256 of every object, so a pull can tell a replaced object from
the one that was published. It is written with "create only", so a version never changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import orjson

from handlers.errors import IntegrityError, RepositoryError
from scripts.repository.stores import INDEX_KEY, MissingObject, Store

__all__ = ["PublishedFile", "PublishedVersion", "version_prefix", "published_versions",
           "read_published", "write_index"]


def version_prefix(name: str, version: str) -> str:
    return f"{name}/{version}"


@dataclass(frozen=True)
class PublishedFile:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class PublishedVersion:
    FORMAT: ClassVar[int] = 1
    FILE: ClassVar[str] = "version.json"

    name: str
    version: str
    archive: str  # the archive's name: a file (<name>-<version>.mar) or a folder
    archive_format: str  # mar | folder
    files: dict[str, PublishedFile]  # every other object of the version, by key under its folder
    signature: str | None  # the bundle's key under the version folder; None: unsigned
    signer: str | None  # the signing key's fingerprint (sha256 of its PEM public key)
    published_at: str  # UTC, ISO 8601
    build: dict[str, Any]  # from the build record: commit, torch, arch, runtime, precision, gate

    @property
    def prefix(self) -> str:
        return version_prefix(self.name, self.version)

    @property
    def archive_files(self) -> dict[str, PublishedFile]:
        """The archive's own objects: the .mar, or every file of the folder."""
        return {key: entry for key, entry in self.files.items()
                if key == self.archive or key.startswith(f"{self.archive}/")}

    @property
    def size(self) -> int:
        return sum(entry.bytes for entry in self.archive_files.values())

    def to_bytes(self) -> bytes:
        return (json.dumps({"format": self.FORMAT, **asdict(self)}, indent=2, sort_keys=True)
                + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> "PublishedVersion":
        try:
            data = json.loads(raw)
            found = data.pop("format", None)
            if not isinstance(found, int) or found > cls.FORMAT:
                raise IntegrityError(f"{where} has format {found!r}; this `mar` reads format "
                                     f"{cls.FORMAT} or older. Update mar-pipeline on this host.")
            files = {key: PublishedFile(**entry) for key, entry in data.pop("files").items()}
            return cls(files=files, **data)
        except (ValueError, KeyError, TypeError) as err:
            raise IntegrityError(f"{where} is not a version record ({type(err).__name__}: {err}); "
                                 "it was damaged or replaced. Publish the version again under a "
                                 "new version number.") from None

    def row(self) -> dict[str, Any]:
        """The listing's view: who signed it, from what, for what, how big, when."""
        return {"name": self.name, "version": self.version, "signer": self.signer,
                "git_commit": self.build.get("git_commit"),
                "uncommitted_changes": self.build.get("uncommitted_changes"),
                "torch_version": self.build.get("torch_version"),
                "runtime": self.build.get("runtime", "eager"),
                "precision": self.build.get("precision"), "accuracy": self.build.get("accuracy"),
                "archive": self.archive, "bytes": self.size, "published_at": self.published_at}


def read_published(store: Store, name: str, version: str) -> PublishedVersion:
    """A committed version. Raises RepositoryError listing the versions that exist when it is
    not there."""
    key = f"{version_prefix(name, version)}/{PublishedVersion.FILE}"
    try:
        raw = store.read(key)
    except MissingObject:
        versions = [v.version for v in published_versions(store, name)]
        started = version in store.children(name) if store.writable else False
        raise RepositoryError(
            f"{store.url(version_prefix(name, version))} is not a published version"
            + (" (a publish of it started and did not finish; publishing it again replaces what "
               "it left)" if started else "")
            + (f". Published versions of {name}: {', '.join(versions)}" if versions
               else f". {store.url()} has no published version of {name}")
            + ". Pull one of those, or publish it first (`mar publish ARCHIVE REPO`).") from None
    return PublishedVersion.from_bytes(raw, store.url(key))


def published_versions(store: Store, name: str | None = None) -> list[PublishedVersion]:
    """Every committed version (of `name`), in name and version order; versions whose publish
    did not finish are skipped."""
    found = []
    for model in [name] if name else store.children():
        for version in store.children(model):
            key = f"{version_prefix(model, version)}/{PublishedVersion.FILE}"
            try:
                found.append(PublishedVersion.from_bytes(store.read(key), store.url(key)))
            except MissingObject:
                continue
    return found


def write_index(store: Store) -> None:
    """index.json from the store's own listing: how HTTPS clients list it. Two publishes at once
    may each write an index missing the other's version; the next publish restores it."""
    models: dict[str, list[str]] = {}
    for published in published_versions(store):
        models.setdefault(published.name, []).append(published.version)
    store.put_bytes(INDEX_KEY, orjson.dumps({"format": 1, "models": models},
                                            option=orjson.OPT_INDENT_2))
