"""`mar` commands that move archives between a host and a model repository: publish, pull, and
the repository listing of `mar models --repo`."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.cli.common import command
from scripts.config import read_config
from scripts.settings import MarSettings

__all__ = ["add_publish", "add_pull", "print_repository"]


def add_publish(commands) -> None:
    sub = command(commands, "publish", _cmd_publish, "publish an archive to a model repository "
                  "(a folder, s3://BUCKET/PREFIX), signed with --sign-key", server=False)
    sub.add_argument("archive", type=Path, metavar="ARCHIVE")
    sub.add_argument("repo", metavar="REPO", help="a folder, s3://BUCKET/PREFIX")
    sub.add_argument("--sign-key", type=Path, metavar="KEY.pem",
                     help="EC private key (PEM) to sign the archive with (OpenSSF model-signing)")


def _cmd_publish(args) -> int:
    from scripts.repository import publish, short

    result = publish(args.archive, args.repo, sign_key=args.sign_key)
    record = result.record
    print(f"published {record.name} {record.version} to {result.address} "
          f"({record.size / 1e6:.1f} MB, {short(record.signer)})")
    if result.index_error:
        print(f"warning: the version is published, but index.json was not updated "
              f"({result.index_error}); HTTPS listings miss it until the next publish")
    return 0


def add_pull(commands) -> None:
    sub = command(commands, "pull", _cmd_pull, "fetch a published version into the model store "
                  "of --config, verified (signature, hashes, build record) before it lands")
    sub.add_argument("repo", metavar="REPO", help="a folder, s3://BUCKET/PREFIX or https://...")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("version", metavar="VERSION")
    sub.add_argument("--trust", type=Path, action="append", metavar="PUB.pem",
                     help="a public key whose signatures to accept (repeatable; adds to "
                     "trusted_keys in mar.yaml beside --config)")


def _cmd_pull(args) -> int:
    from scripts.repository import TrustedKeys, pull, short

    config = read_config(args.config)
    trust = TrustedKeys(MarSettings.beside(config.path).with_trusted(args.trust))
    pulled = pull(args.repo, args.name, args.version, model_store=config.model_store, trust=trust)
    verdict = f"signature verified ({short(pulled.verified_by)})" if pulled.verified_by else \
        "signature NOT verified: no trusted keys (pass --trust PUB.pem or list trusted_keys in " \
        "mar.yaml)"
    print(f"pulled {pulled.archive} ({pulled.published.size / 1e6:.1f} MB): {verdict}; hashes "
          f"and build record match. Register it with `mar register {pulled.archive}`.")
    return 0


def print_repository(address: str, name: str | None, as_json: bool) -> int:
    """`mar models --repo`: every published version (of `name`)."""
    from scripts.repository import open_store, published_versions, short

    rows = [published.row() for published in published_versions(open_store(address), name)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "VERSION", "SIGNER", "COMMIT", "TORCH", "RUNTIME", "PRECISION", "MB",
              "PUBLISHED")]
    for row in rows:
        commit = (row["git_commit"] or "-")[:10] + ("+dirty" if row["uncommitted_changes"] else "")
        table.append((row["name"], row["version"], short(row["signer"]), commit,
                      row["torch_version"] or "-", row["runtime"], row["precision"] or "-",
                      f"{row['bytes'] / 1e6:.1f}", row["published_at"]))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if not rows:
        print(f"(no published version in {address})")
    return 0
