"""The signatures beside archives in a model store: `mar pull` leaves `<archive>.sig` next to the
archive it verified, and `mar serve start` and `mar register` check it again before the archive's
code can run, since a model store is a folder anyone with its permissions can change.
"""

from __future__ import annotations

from pathlib import Path

from handlers.errors import IntegrityError
from scripts.repository.signing import TrustedKeys, short

__all__ = ["check_installed", "signature_of"]


def signature_of(archive: Path) -> Path:
    return archive.with_name(f"{archive.name}.sig")


def check_installed(archive: Path, trust: TrustedKeys, *, require_signed: bool) -> str:
    """How `archive` stands, in a few words ("signed by sha256:..., verified"; "unsigned";
    "signed, not verified: ..."), once its signature is checked (every file hashed again) where
    this host trusts keys. Raises IntegrityError for a changed archive or an untrusted key, and
    for an unsigned one where `require_signed`."""
    signature = signature_of(archive)
    if not signature.is_file():
        if require_signed:
            raise IntegrityError(
                f"{archive} has no signature ({signature.name}), and this host's mar.yaml sets "
                "require_signed: true. Pull it from a repository where it was published with "
                "--sign-key, or set require_signed: false for archives built on this host.")
        return "unsigned"
    if not trust:
        return ("signed, not verified: this host trusts no key (list the publisher's public key "
                "under trusted_keys in mar.yaml)")
    return f"signed by {short(trust.verify_files(archive, signature))}, verified"
