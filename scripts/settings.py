"""The `mar` settings of one host: `mar.yaml`, beside the config.properties that names its server.
A training host and an inference node each have their own.

    trusted_keys: [keys/release.pub]   # public keys whose signatures this host accepts (relative
                                       # to mar.yaml); `mar pull --trust` adds to them
    require_signed: true               # refuse archives without a signature at register and at
                                       # `mar serve start` (default false: archives built here load)

With trusted keys, `mar pull` refuses unsigned, badly signed and untrusted archives, and `mar serve
start` and `mar register` re-verify the signed archives of the model store before they load.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from handlers.errors import UsageError

__all__ = ["MarSettings"]


@dataclass(frozen=True)
class MarSettings:
    FILE: ClassVar[str] = "mar.yaml"

    trusted_keys: tuple[Path, ...] = ()
    require_signed: bool = False
    source: Path | None = None  # the file read; None when the host has none

    @classmethod
    def beside(cls, config_path: Path) -> "MarSettings":
        """The settings in the folder of `config_path` (defaults when it holds no mar.yaml).
        Raises UsageError naming every problem in the file."""
        path = config_path.resolve().parent / cls.FILE
        if not path.is_file():
            return cls()
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"{path}: not valid YAML ({err}). Fix the syntax.") from None
        return cls._parsed(raw, path)

    @classmethod
    def _parsed(cls, raw: Any, path: Path) -> "MarSettings":
        allowed = [f.name for f in fields(cls) if f.name != "source"]
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: expected a mapping with keys {', '.join(allowed)}")
        problems = [f"unknown key `{key}`: remove it or fix its spelling (allowed: "
                    f"{', '.join(allowed)})" for key in sorted(set(raw) - set(allowed), key=str)]
        keys = raw.get("trusted_keys", [])
        if not (isinstance(keys, list) and all(isinstance(k, str) and k for k in keys)):
            problems.append(f"`trusted_keys` must be a list of public key files, e.g. "
                            f"[keys/release.pub], got {keys!r}")
            keys = []
        required = raw.get("require_signed", False)
        if not isinstance(required, bool):
            problems.append(f"`require_signed` {required!r} must be true or false")
        elif required and not keys:
            problems.append("`require_signed: true` needs `trusted_keys` to check signatures with "
                            "(the publishers' public keys)")
        if problems:
            raise UsageError(f"{path}: invalid settings\n" + "\n".join(f"  - {p}" for p in problems))
        return cls(tuple((path.parent / key).resolve() for key in keys), required, path)

    def with_trusted(self, extra: list[Path] | None) -> tuple[Path, ...]:
        """The trusted keys plus those a command line adds."""
        return self.trusted_keys + tuple(Path(key).resolve() for key in extra or [])
