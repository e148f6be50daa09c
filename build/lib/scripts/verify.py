"""`mar verify`: re-run an archive's build-record and golden checks from the archive alone.

The check runs in a fresh Python process whose import path starts with the extracted archive, so it
exercises exactly the files TorchServe will load, not this repository's copies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts.archive import open_archive
from scripts.config import REPO_ROOT

__all__ = ["VerifyResult", "env_without_repository", "verify_archive"]

_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from handlers.selfcheck import main; sys.exit(main(sys.argv[1:]))")


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    report: str  # the fresh process's verdict, or its error


def verify_archive(archive: Path, *, timeout_s: float = 600) -> VerifyResult:
    """Check `archive` (a .mar or an archive folder) in a fresh process. Raises MarError when it
    is not an archive at all."""
    with open_archive(archive).extracted() as model_dir:
        model_dir = model_dir.resolve()
        result = subprocess.run([sys.executable, "-c", _BOOTSTRAP, str(model_dir)], cwd=model_dir,
                                env=env_without_repository(), capture_output=True, text=True,
                                timeout=timeout_s)
    report = (result.stdout + result.stderr).strip()
    return VerifyResult(result.returncode == 0, report.replace(str(model_dir), "<archive>"))


def env_without_repository() -> dict[str, str]:
    """This environment with PYTHONPATH minus the repository: its model_defs must not stand in for
    a file the archive lacks. Other entries (packages installed with pip --target) stay."""
    env = dict(os.environ)
    kept = [entry for entry in env.pop("PYTHONPATH", "").split(os.pathsep)
            if entry and Path(entry).resolve() != REPO_ROOT]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    return env
