"""An inference node without this repository, for the end-to-end tests.

It has a Python environment of its own: the project installed from its wheel (as `pip install
mar-pipeline` would, no editable finder), the third-party libraries of this machine's .venv
reached by path (their .pth hooks, the editable finder among them, are not run), its own `mar`
and `torchserve` commands (so TorchServe's workers run this Python too), and its own config
folder. Nothing in it can import the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from scripts.config import private_env, read_config, write_private_config
from tests.helpers import REPO_ROOT

_LAUNCHER = """#!{python}
import sys
from {module} import {function}
sys.exit({function}())
"""


class SourceLessNode:
    def __init__(self, root: Path) -> None:
        self.root = root
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        self.python = venv / "bin" / "python"
        site = Path(subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig."
                                    "get_paths()['purelib'])"], capture_output=True, text=True,
                                   check=True).stdout.strip())
        self._install_wheel(site)
        (site / "serving_libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        for name, module, function in (("mar", "scripts.cli", "main"),
                                       ("torchserve", "ts.model_server", "start")):
            launcher = venv / "bin" / name
            launcher.write_text(_LAUNCHER.format(python=self.python, module=module,
                                                 function=function))
            launcher.chmod(0o755)
        self.home = root / "node"
        self.home.mkdir()
        self.config = read_config(write_private_config(self.home))
        self.env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                    **private_env(self.home),
                    "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _install_wheel(self, site: Path) -> None:
        dist = self.root / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(dist), str(REPO_ROOT)],
                       check=True, capture_output=True)
        (wheel,) = dist.glob("mar_pipeline-*.whl")
        with zipfile.ZipFile(wheel) as archive:  # a wheel installs by unpacking into site-packages
            archive.extractall(site)

    def run(self, *args: str, env: dict | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """A command on the node, in its folder, with its environment."""
        result = subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=self.home,
                                env={**self.env, **(env or {})}, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def mar(self, *args: str, env: dict | None = None, check: bool = True):
        """`mar` on the node, against its own server (--config)."""
        return self.run(self.root / "venv" / "bin" / "mar", *args, "--config", self.config.path,
                        env=env, check=check)
