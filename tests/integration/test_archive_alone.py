"""An extracted archive serves in a Python process that cannot import this repository."""

import json
import subprocess
import sys
import zipfile

import torch

from scripts.build import build_archive
from scripts.verify import env_without_repository
from tests.helpers import REPO_ROOT


ARCHIVE_ONLY = r"""
import json, os, sys, torch
repo = sys.argv[2]
# Forget every route to the repository: its path entry and the editable-install finder.
sys.path[:] = [sys.argv[1]] + [p for p in sys.path if p and os.path.realpath(p) != repo]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
from ts.context import Context, RequestProcessor
import model_handler
context = Context("digits_cnn", sys.argv[1], {}, 1, None, "0.12.0")
context.request_processor = [RequestProcessor({})]
model_handler.handle(None, context)
torch.manual_seed(5)
inputs = torch.rand(2, 1, 8, 8).tolist()
out = model_handler.handle([{"body": json.dumps({"inputs": inputs}).encode()}], context)
loaded = sorted({m.__file__ for m in list(sys.modules.values())
                 if getattr(m, "__file__", None) and m.__name__.split(".")[0] in
                 ("model_handler", "handlers", "model_defs", "scripts")})
print(json.dumps({"outputs": json.loads(out[0])["outputs"], "inputs": inputs, "files": loaded}))
"""


def test_extracted_archive_serves_without_the_repository(digits_spec, digits_model, tmp_path):
    archive = build_archive(digits_spec, export_path=tmp_path / "store").archive
    model_dir = tmp_path / "extracted"
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(model_dir)
    result = subprocess.run([sys.executable, "-c", ARCHIVE_ONLY, str(model_dir), str(REPO_ROOT)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env=env_without_repository())
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["files"] and all(f.startswith(str(model_dir)) for f in answer["files"])
    with torch.inference_mode():
        expected = digits_model(torch.tensor(answer["inputs"]))
    assert torch.allclose(torch.tensor(answer["outputs"]), expected, atol=1e-5)


