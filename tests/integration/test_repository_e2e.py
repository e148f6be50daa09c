"""The practice's three places, end to end: the training host (this repository) builds, signs and
publishes to S3; an inference node that cannot import this repository pulls, verifies, registers
and predicts; a tampered archive in its model store is left out at the next `mar serve start`
while the other loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT, digits_model, digits_versions, run_mar
from tests.keys import make_key_pair
from tests.nodes import SourceLessNode

REPO = "s3://models/end-to-end"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node = SourceLessNode(tmp_path_factory.mktemp("inference-node"))
    yield node
    node.mar("serve", "stop", check=False)


def test_training_host_to_a_source_less_node_and_a_tampered_archive_left_out(s3, tmp_path, node):
    # The training host: build two versions, sign, publish.
    keys = make_key_pair(tmp_path, "release")
    built = digits_versions(tmp_path / "training-host", ("1.0", "1.1"))
    for archive in built.values():
        run_mar("publish", archive, REPO, "--sign-key", keys.private, env=s3.env())

    # The node: nothing of the repository is importable; it trusts the release key only.
    where = json.loads(node.run(node.python, "-c", "import json, sys, scripts, handlers, model_defs;"
                                " print(json.dumps({'files': [m.__file__ for m in (scripts, "
                                "handlers, model_defs)], 'path': sys.path}))").stdout)
    assert all(Path(f).is_relative_to(node.root) for f in where["files"]), where
    assert str(REPO_ROOT) not in where["path"]  # and "" is the node's own folder
    (node.home / "release.pub").write_bytes(keys.public.read_bytes())
    (node.home / "mar.yaml").write_text("trusted_keys: [release.pub]\nrequire_signed: true\n")
    for version in built:
        pulled = node.mar("pull", REPO, "digits_cnn", version, env=s3.env())
        assert "signature verified" in pulled.stdout
    node.mar("serve", "start")
    for version in built:
        registered = node.mar("register", node.config.model_store / f"digits_cnn-{version}.mar")
        assert "signed by sha256:" in registered.stdout and "verified" in registered.stdout
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    (node.home / "request.json").write_text(json.dumps({"inputs": images.tolist()}))
    answer = json.loads(node.mar("predict", "digits_cnn", "--version", "1.0", "--input",
                                 node.home / "request.json").stdout)
    with torch.inference_mode():
        expected = digits_model()(images)
    assert torch.allclose(torch.tensor(answer["outputs"]), expected, atol=1e-5)

    # Someone with write access to the node's disk changes 1.0; the next start leaves it out.
    node.mar("serve", "stop")
    tampered = node.config.model_store / "digits_cnn-1.0.mar"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    restarted = node.mar("serve", "start")
    assert "NOT restored digits_cnn 1.0 (default): " in restarted.stdout
    assert "does not match its signature" in restarted.stdout
    assert "restored digits_cnn 1.1 (default): signed by sha256:" in restarted.stdout
    listed = json.loads(node.mar("models", "--json").stdout)
    assert [m["modelVersion"] for m in listed] == ["1.1"]
    answer = json.loads(node.mar("predict", "digits_cnn", "--input",
                                 node.home / "request.json").stdout)
    assert torch.allclose(torch.tensor(answer["outputs"]), expected, atol=1e-5)
    node.mar("serve", "stop")
