"""Where a model repository lives, behind one interface: a folder (an NFS mount is a folder), an
S3-compatible bucket, or an HTTPS server (read-only). Publishing, pulling and listing
(scripts/repository/) are written once against `Store`; `open_store` picks the class from the
address. A new kind of address is one more class here and one line in `open_store`.

    /srv/models, file:///srv/models    FolderStore
    s3://bucket/prefix                 S3Store: boto3, configured by the standard AWS variables
                                       (AWS_ENDPOINT_URL for MinIO, Ceph and the like)
    https://models.example.com/repo    HTTPSStore: urllib, certificates verified (SSL_CERT_FILE
                                       names a private CA's bundle)

Keys are `/`-separated paths under the repository's root. Every failure is a RepositoryError
naming the address and the fix; an absent object is `MissingObject`, which callers may expect.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import orjson

from handlers.errors import RepositoryError

__all__ = ["Store", "MissingObject", "open_store", "INDEX_KEY", "CHUNK"]

CHUNK = 8 << 20  # bytes per read while streaming
INDEX_KEY = "index.json"  # names and versions, for stores that cannot list (HTTPS)


class MissingObject(RepositoryError):
    """The repository holds no object under this key."""


class Store:
    """A repository's objects. Subclasses implement the storage; messages use `url(key)`."""

    address: str
    writable = True

    def url(self, key: str = "") -> str:
        return f"{self.address.rstrip('/')}/{key}" if key else self.address

    def require_writable(self) -> None:
        """Raises RepositoryError when this store only reads."""

    def read(self, key: str) -> bytes:
        """A small object whole. Raises MissingObject or RepositoryError."""
        return b"".join(self.stream(key))

    def stream(self, key: str) -> Iterator[bytes]:
        """A large object in chunks, as it arrives. Raises MissingObject or RepositoryError (a
        connection dropped mid-way among them)."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def children(self, prefix: str = "") -> list[str]:
        """The names one level below `prefix` (folders, or key prefixes), sorted."""
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> None:
        """Upload a file; readers see the whole object or none."""
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        """Write a small object. `exclusive`: refuse (RepositoryError) when one exists, atomically,
        so of two publishers of one version only one commits."""
        raise NotImplementedError


class FolderStore(Store):
    def __init__(self, root: Path, address: str) -> None:
        self.root, self.address = root, address

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def stream(self, key: str) -> Iterator[bytes]:
        try:
            file = open(self._path(key), "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise MissingObject(f"{self.url(key)} does not exist") from None
        except OSError as err:
            raise RepositoryError(f"cannot read {self.url(key)} ({err}); check the folder's "
                                  "permissions and mount") from None
        with file:
            while chunk := file.read(CHUNK):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def children(self, prefix: str = "") -> list[str]:
        folder = self._path(prefix) if prefix else self.root
        if not self.root.is_dir():
            raise RepositoryError(f"the repository folder {self.root} does not exist; create it "
                                  f"(`mkdir -p {self.root}`) or fix the address")
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        self._written(target, lambda temporary: shutil.copyfile(path, temporary))

    def put_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        target = self._path(key)
        self._written(target, lambda temporary: temporary.write_bytes(data), exclusive=exclusive)

    def _written(self, target: Path, write, *, exclusive: bool = False) -> None:
        """Write to a temporary name beside `target`, then move it in: a hard link when
        `exclusive` (fails if `target` exists, atomically, on local disks and NFS alike)."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            os.close(handle)
            temporary = Path(name)
            try:
                write(temporary)
                if exclusive:
                    os.link(temporary, target)
                else:
                    os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
        except FileExistsError:
            raise RepositoryError(f"{self.url(self._key(target))} exists already") from None
        except OSError as err:
            raise RepositoryError(f"cannot write {target} ({err}); check the folder's free space "
                                  "and permissions") from None

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


class S3Store(Store):
    """A bucket and prefix on any S3-compatible server. boto3 reads the standard variables
    itself (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
    AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_CA_BUNDLE); nothing here overrides them."""

    def __init__(self, bucket: str, prefix: str, address: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix, self.address = bucket, prefix.strip("/"), address
        session = boto3.session.Session()  # its own credential lookup, never a cached one
        self.client = session.client("s3", config=Config(
            connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}))
        self.endpoint = self.client.meta.endpoint_url

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def stream(self, key: str) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError

        with _s3_errors(self, key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        received = 0
        try:
            for chunk in body.iter_chunks(CHUNK):
                received += len(chunk)
                yield chunk
        except (BotoCoreError, OSError) as err:  # the connection broke mid-object
            raise RepositoryError(
                f"the connection to {self.endpoint} dropped while downloading {self.url(key)}, "
                f"after {received:,} bytes ({type(err).__name__}: {err}). Nothing was kept; "
                "retry the command.") from None
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            with _s3_errors(self, key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except MissingObject:
            return False
        return True

    def children(self, prefix: str = "") -> list[str]:
        base = self._key(prefix).rstrip("/")
        base = f"{base}/" if base else ""
        names = []
        with _s3_errors(self, prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=base, Delimiter="/"):
                names += [p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def put_file(self, key: str, path: Path) -> None:
        # boto3's own multipart settings (8 MB parts, 10 threads): 64 MB parts took 1.6x as long
        with _s3_errors(self, key):
            self.client.upload_file(str(path), self.bucket, self._key(key))

    def put_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        with _s3_errors(self, key, exclusive=exclusive):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   **({"IfNoneMatch": "*"} if exclusive else {}))


_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN for "
                         "temporary credentials), or AWS_PROFILE naming a profile in "
                         "~/.aws/credentials")


@contextlib.contextmanager
def _s3_errors(store: S3Store, key: str, *, exclusive: bool = False) -> Iterator[None]:
    """botocore's exceptions for one call, as RepositoryErrors that name the fix."""
    from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError,
                                     NoCredentialsError, PartialCredentialsError)

    where = store.url(key)
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise RepositoryError(f"no AWS credentials for {where} ({error}). Set "
                              f"{_CREDENTIAL_VARIABLES}.") from None
    except EndpointConnectionError as error:
        raise RepositoryError(f"cannot reach {store.endpoint} for {where} ({error}). Check that "
                              "the server is up and that AWS_ENDPOINT_URL (or AWS_DEFAULT_REGION "
                              "for AWS itself) names it.") from None
    except ClientError as error:
        raise _client_error(store, where, error, exclusive) from None
    except BotoCoreError as error:
        raise RepositoryError(f"{where}: {type(error).__name__}: {error}. Check the network and "
                              f"AWS_ENDPOINT_URL ({store.endpoint}).") from None


def _client_error(store: S3Store, where: str, error, exclusive: bool) -> RepositoryError:
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("NoSuchKey", "404", "NotFound"):
        return MissingObject(f"{where} does not exist")
    if code == "NoSuchBucket":
        return RepositoryError(f"bucket {store.bucket} does not exist at {store.endpoint}; "
                               f"create it (`aws s3 mb s3://{store.bucket}`) or fix the address")
    if exclusive and code in ("PreconditionFailed", "ConditionalRequestConflict"):
        return RepositoryError(f"{where} exists already")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                "AccessDenied", "403", "Forbidden"):
        return RepositoryError(f"{store.endpoint} refused the credentials for {where} ({code}). "
                               f"Set {_CREDENTIAL_VARIABLES}, to a key this server knows that "
                               "may read and write the bucket.")
    return RepositoryError(f"{where}: the server answered {code or status} "
                           f"({error.response.get('Error', {}).get('Message', error)}).")


class HTTPSStore(Store):
    """Read-only: a repository that a folder or bucket written by `mar publish` serves over
    HTTPS. It cannot list, so it reads the repository's index.json."""

    writable = False

    def __init__(self, address: str) -> None:
        self.address = address.rstrip("/")
        self._context = ssl.create_default_context()  # verifies; honours SSL_CERT_FILE

    def stream(self, key: str) -> Iterator[bytes]:
        url = self.url("/".join(quote(part) for part in key.split("/")))
        try:
            answer = urllib.request.urlopen(url, timeout=60, context=self._context)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise MissingObject(f"{self.url(key)} does not exist") from None
            raise RepositoryError(f"{self.url(key)} answered HTTP {err.code} {err.reason}; check "
                                  "the address and the server's access rules") from None
        except urllib.error.URLError as err:
            raise _unreachable(self.url(key), err.reason) from None
        received = 0
        with answer:
            try:
                while chunk := answer.read(CHUNK):
                    received += len(chunk)
                    yield chunk
            except OSError as err:
                raise RepositoryError(f"the connection dropped while downloading {self.url(key)}, "
                                      f"after {received:,} bytes ({err}). Nothing was kept; retry "
                                      "the command.") from None

    def exists(self, key: str) -> bool:
        try:
            self.read(key)
        except MissingObject:
            return False
        return True

    def children(self, prefix: str = "") -> list[str]:
        try:
            index = orjson.loads(self.read(INDEX_KEY))
        except MissingObject:
            raise RepositoryError(f"{self.url(INDEX_KEY)} does not exist: an HTTPS repository is "
                                  "listed from the index.json that `mar publish` writes. Serve a "
                                  "folder or bucket that `mar publish` wrote.") from None
        except orjson.JSONDecodeError as err:
            raise RepositoryError(f"{self.url(INDEX_KEY)} is not JSON ({err})") from None
        node = index.get("models", {})
        for part in [p for p in prefix.split("/") if p]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return sorted(node) if isinstance(node, dict) else sorted(node or [])

    def require_writable(self) -> None:
        raise RepositoryError(f"{self.address} is read-only: HTTPS repositories are for pulls. "
                              "Publish to the folder or s3:// bucket the server serves.")

    def put_file(self, key: str, path: Path) -> None:
        self.require_writable()

    def put_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self.require_writable()


def _unreachable(url: str, reason) -> RepositoryError:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return RepositoryError(f"the certificate of {url} could not be verified ({reason.verify_message}"
                               "). If the server uses a private certificate authority, set "
                               "SSL_CERT_FILE to that CA's bundle (PEM); verification stays on.")
    return RepositoryError(f"cannot reach {url} ({reason}). Check the address and that the server "
                           "is up.")


def open_store(address: str) -> Store:
    """The store an address names. Raises RepositoryError for an address of no known kind."""
    parts = urlsplit(address)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise RepositoryError(f"{address!r} names no bucket; write s3://BUCKET/PREFIX")
        return S3Store(parts.netloc, parts.path, address)
    if parts.scheme == "https":
        return HTTPSStore(address)
    if parts.scheme == "http":
        raise RepositoryError(f"{address!r}: plain http is refused, since anyone on the path could "
                              "change what is pulled; serve the repository over https://")
    if parts.scheme in ("", "file"):
        root = Path(parts.path if parts.scheme == "file" else address).expanduser().resolve()
        return FolderStore(root, str(root))
    raise RepositoryError(f"{address!r} is not a repository address; use a folder, "
                          "s3://BUCKET/PREFIX or https://HOST/PATH")
