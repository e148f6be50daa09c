"""Signatures over archives, with OpenSSF model-signing: a sigstore bundle whose in-toto payload
lists the sha256 of every file, signed with an EC private key (P-256, P-384 or P-521 PEM).

The bundles are exactly what the upstream CLI writes and reads, so a node without this project
verifies with `model_signing verify key ARCHIVE --signature ARCHIVE.sig --public_key PUB.pem`.

A key's fingerprint is the sha256 of its PEM public key, the `hint` model-signing records in every
bundle: what `mar` prints for a signer, and how a bundle names the key to check it with.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from handlers.errors import IntegrityError, UsageError

__all__ = ["sign", "Bundle", "TrustedKeys", "SignedManifest", "fingerprint", "short"]

_MAKE_KEY = ("make a key pair with `openssl ecparam -name prime256v1 -genkey -noout -out "
             "signing.pem` and `openssl ec -in signing.pem -pubout -out signing.pub`")


def fingerprint(public_key) -> str:
    """sha256 of the PEM SubjectPublicKeyInfo, as model-signing's bundles record it."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(encoding=serialization.Encoding.PEM,
                                  format=serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def short(print_: str | None) -> str:
    return f"sha256:{print_[:16]}" if print_ else "unsigned"


@dataclass(frozen=True)
class SignedManifest:
    """What a verified bundle vouches for: every file's sha256, by its path in the signed folder
    (`.` for a signed file), and the key that signed it."""
    fingerprint: str
    digests: dict[str, str]


@dataclass(frozen=True)
class Bundle:
    """A signature bundle as read, before any check: the key it names and what it claims."""
    raw: bytes
    claimed_signer: str | None

    @classmethod
    def parse(cls, raw: bytes, where: str) -> "Bundle":
        try:
            data = json.loads(raw)
            hint = data["verificationMaterial"].get("publicKey", {}).get("hint")
            base64.b64decode(data["dsseEnvelope"]["payload"], validate=True)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise IntegrityError(f"{where} is not a model-signing signature bundle ({err}); the "
                                 "signature was damaged or replaced. Publish it again.") from None
        return cls(raw, hint if isinstance(hint, str) else None)


def sign(path: Path, private_key: Path, signature: Path, *,
         ignore: Iterable[str] = ()) -> SignedManifest:
    """Sign every file of `path` (a file or a folder, minus `ignore`, relative to it) with an EC
    private key; write the bundle to `signature`. Raises UsageError for an unusable key."""
    import model_signing

    try:
        config = model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key)
    except FileNotFoundError:
        raise UsageError(f"no signing key at {private_key}; {_MAKE_KEY}") from None
    except (ValueError, TypeError) as err:
        raise UsageError(f"{private_key} is not an EC private key in PEM ({err}); {_MAKE_KEY}"
                         ) from None
    config.set_hashing_config(model_signing.hashing.Config().set_ignored_paths(
        paths=list(ignore), ignore_git_paths=False))
    config.sign(path, signature)
    return _payload_manifest(signature.read_bytes(), _own_fingerprint(private_key))


class TrustedKeys:
    """The public keys a node trusts, by fingerprint."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = {fingerprint(_public_key(path)): path for path in paths}

    def __bool__(self) -> bool:
        return bool(self.paths)

    def describe(self) -> str:
        return ", ".join(f"{short(f)} ({p.name})" for f, p in self.paths.items())

    def check_bundle(self, bundle: Bundle, where: str) -> SignedManifest:
        """The digests `bundle` vouches for, once its envelope's signature is checked with the
        trusted key it names. Raises IntegrityError for an untrusted key or a bad signature."""
        from model_signing._signing import sign_ec_key

        key = self._key_for(bundle, where)
        try:
            manifest = sign_ec_key.Verifier(key).verify(_signature(bundle.raw))
        except Exception as err:  # noqa: BLE001 - cryptography and protobuf raise many kinds
            raise IntegrityError(f"bad signature: {where} does not verify with the trusted key "
                                 f"{short(bundle.claimed_signer)} ({key.name}): "
                                 f"{type(err).__name__} {err}. The archive or its signature was "
                                 "changed after signing; nothing was kept.") from None
        return SignedManifest(bundle.claimed_signer, {
            rd.identifier: rd.digest.digest_hex for rd in manifest.resource_descriptors()})

    def verify_files(self, path: Path, signature: Path) -> str:
        """The upstream check over files on disk (every file hashed again): returns the signer's
        fingerprint. Raises IntegrityError naming what differs."""
        import model_signing

        bundle = Bundle.parse(signature.read_bytes(), str(signature))
        key = self._key_for(bundle, str(signature))
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key).verify(
                path, signature)
        except Exception as err:  # noqa: BLE001 - model-signing raises ValueError and others
            raise IntegrityError(f"{path} does not match its signature {signature.name}: {err}. "
                                 "It was changed after it was signed.") from None
        return bundle.claimed_signer

    def _key_for(self, bundle: Bundle, where: str) -> Path:
        key = self.paths.get(bundle.claimed_signer or "")
        if key is None:
            raise IntegrityError(
                f"untrusted key: {where} is signed by {short(bundle.claimed_signer)} "
                f"(fingerprint {bundle.claimed_signer}), which is not among the trusted keys "
                f"({self.describe()}). If you trust its publisher, add their public key with "
                "--trust PUB.pem or to trusted_keys in mar.yaml.")
        return key


def _public_key(path: Path):
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"no public key at {path} (a trusted key); {_MAKE_KEY}") from None
    except ValueError as err:
        raise UsageError(f"{path} is not a PEM public key ({err}); give the .pub of a key pair: "
                         f"{_MAKE_KEY}") from None


def _own_fingerprint(private_key: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    return fingerprint(serialization.load_pem_private_key(private_key.read_bytes(), None).public_key())


def _signature(raw: bytes):
    """The bundle as model-signing's own reader makes it (its `read` takes a path)."""
    import tempfile

    from model_signing._signing import sign_sigstore_pb

    with tempfile.NamedTemporaryFile(suffix=".sig") as file:
        file.write(raw)
        file.flush()
        return sign_sigstore_pb.Signature.read(Path(file.name))


def _payload_manifest(raw: bytes, signer: str | None) -> SignedManifest:
    """The per-file digests in a bundle's payload (as signed; check the signature first)."""
    payload = json.loads(base64.b64decode(json.loads(raw)["dsseEnvelope"]["payload"]))
    return SignedManifest(signer or "", {resource["name"]: resource["digest"]
                                         for resource in payload["predicate"]["resources"]})
