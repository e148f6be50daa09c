"""File digests: sha256 for the build record, BLAKE3 for the check every worker start makes."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file", "sha256_bytes", "blake3_file"]

_HASH_CHUNK = 16 << 20


def sha256_file(path: Path) -> str:
    """The file's sha256, read in large chunks (hashlib releases the GIL while hashing)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blake3_file(path: Path) -> str:
    """The file's BLAKE3 digest: the load-time check, ~4x faster than sha256 here (SIMD, threads),
    which matters when every worker start hashes gigabytes."""
    from blake3 import blake3

    return blake3(max_threads=blake3.AUTO).update_mmap(str(path)).hexdigest()
