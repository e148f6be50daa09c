"""A model repository on a real S3-protocol server (moto's, on loopback, authentication on),
driven by `mar` as a user runs it: the standard AWS variables, boto3 unchanged. Network faults
come from a TCP proxy between the two; a full disk from a small tmpfs as the model store."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import MAR, digits_versions, run_mar
from tests.keys import make_key_pair
from tests.servers import Proxy

MODEL_SIGNING = Path(sys.executable).parent / "model_signing"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("built")
    return {**digits_versions(folder, ("1.0", "1.1")), "keys": make_key_pair(folder, "publisher")}


@pytest.fixture
def repo(request) -> str:
    """A prefix of the bucket of its own for each test."""
    return "s3://models/" + re.sub(r"[^A-Za-z0-9_]+", "-", request.node.name).strip("-")


@pytest.fixture
def node(tmp_path):
    """An inference host's config folder: config.properties and its model store."""
    from scripts.config import read_config, write_private_config

    (tmp_path / "node").mkdir()
    return read_config(write_private_config(tmp_path / "node"))


def _store(node) -> list[str]:
    store = node.model_store
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


def _pull(node, repo, env, *extra, version="1.0"):
    return run_mar("pull", repo, "digits_cnn", version, "--config", node.path, *extra, env=env,
                   check=False)


def test_publish_list_and_pull_verified_with_the_standard_variables(s3, built, repo, node):
    keys = built["keys"]
    run_mar("publish", built["1.0"], repo, "--sign-key", keys.private, env=s3.env())
    listed = json.loads(run_mar("models", "--repo", repo, "--json", env=s3.env()).stdout)
    assert [(r["name"], r["version"], r["runtime"], r["precision"]) for r in listed] == \
        [("digits_cnn", "1.0", "eager", "fp32")]
    assert listed[0]["signer"] and listed[0]["bytes"] == built["1.0"].stat().st_size
    pulled = _pull(node, repo, s3.env(), "--trust", keys.public)
    assert pulled.returncode == 0, pulled.stderr
    assert "signature verified (sha256:" in pulled.stdout
    archive = node.model_store / "digits_cnn-1.0.mar"
    assert archive.read_bytes() == built["1.0"].read_bytes()
    upstream = subprocess.run([str(MODEL_SIGNING), "verify", "key", str(archive), "--signature",
                               f"{archive}.sig", "--public_key", str(keys.public)],
                              capture_output=True, text=True)
    assert upstream.returncode == 0, upstream.stdout + upstream.stderr


def test_wrong_or_missing_credentials_name_the_variables_and_setting_them_works(s3, built, repo):
    wrong = {**s3.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    refused = run_mar("publish", built["1.0"], repo, env=wrong, check=False)
    assert refused.returncode == 1
    assert f"{s3.endpoint} refused the credentials" in refused.stderr
    assert "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in refused.stderr
    missing = {k: v for k, v in s3.env().items() if k not in ("AWS_ACCESS_KEY_ID",
                                                                "AWS_SECRET_ACCESS_KEY")}
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    absent = subprocess.run([str(MAR), "publish", str(built["1.0"]), repo], capture_output=True,
                            text=True, env={**environment, **missing}, timeout=120)
    assert absent.returncode == 1 and "no AWS credentials" in absent.stderr
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in absent.stderr
    run_mar("publish", built["1.0"], repo, env=s3.env())  # the fix: the variables set right


def test_an_unreachable_repository_names_the_endpoint_and_the_variable(s3, built, repo, node):
    closed = Proxy(s3.port)
    closed.close()  # nothing listens there any more
    refused = _pull(node, repo, s3.env(closed.url))
    assert refused.returncode == 1
    assert f"cannot reach {closed.url}" in refused.stderr and "AWS_ENDPOINT_URL" in refused.stderr
    assert _store(node) == []
    run_mar("publish", built["1.0"], repo, env=s3.env())
    assert _pull(node, repo, s3.env()).returncode == 0  # the fix: AWS_ENDPOINT_URL names the server


def test_a_dropped_connection_leaves_nothing_and_a_retry_succeeds(s3, built, repo, node):
    run_mar("publish", built["1.0"], repo, env=s3.env())
    proxy = Proxy(s3.port)
    proxy.drop_after(built["1.0"].stat().st_size // 2)
    try:
        dropped = _pull(node, repo, s3.env(proxy.url))
    finally:
        proxy.close()
    assert dropped.returncode == 1
    assert "dropped while downloading" in dropped.stderr and "retry the command" in dropped.stderr
    assert _store(node) == []
    assert _pull(node, repo, s3.env()).returncode == 0


def test_an_object_replaced_between_listing_and_download_is_refused(s3, built, repo, node):
    run_mar("publish", built["1.0"], repo, env=s3.env())
    key = f"{repo.removeprefix('s3://models/')}/digits_cnn/1.0/digits_cnn-1.0.mar"
    proxy = Proxy(s3.port)
    proxy.on_request(f"GET /models/{key}".encode(), lambda: s3.client().put_object(
        Bucket="models", Key=key, Body=built["1.1"].read_bytes()))
    try:
        refused = _pull(node, repo, s3.env(proxy.url))
    finally:
        proxy.close()
    assert refused.returncode == 1, refused.stdout
    assert "changed after it was published" in refused.stderr and "version.json" in refused.stderr
    assert "pull a version published since" in refused.stderr
    assert _store(node) == []
    run_mar("publish", built["1.1"], repo, env=s3.env())  # the fix: a version published since
    assert _pull(node, repo, s3.env(), version="1.1").returncode == 0


@pytest.mark.parametrize("where", ["inside the archive", "after the archive"])
def test_a_publish_killed_partway_is_invisible_and_publishing_again_succeeds(
        s3, built, repo, node, where):
    proxy = Proxy(s3.port)
    if where == "inside the archive":
        proxy.stall_after(built["1.0"].stat().st_size // 2)
    else:
        prefix = repo.removeprefix("s3://models/")  # the archive is up; its record is not
        proxy.stall_on(f"PUT /models/{prefix}/digits_cnn/1.0/build-info.json".encode())
    publisher = subprocess.Popen([str(MAR), "publish", str(built["1.0"]), repo],
                                 env={**os.environ, **s3.env(proxy.url)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proxy.stalled.wait(120), "the publish never reached the stall"
        publisher.send_signal(signal.SIGKILL)
        publisher.wait(timeout=30)
    finally:
        proxy.close()
    listed = json.loads(run_mar("models", "--repo", repo, "--json", env=s3.env()).stdout)
    assert listed == []
    invisible = _pull(node, repo, s3.env())
    assert invisible.returncode == 1 and "is not a published version" in invisible.stderr
    if where == "after the archive":
        assert "a publish of it started and did not finish" in invisible.stderr
    run_mar("publish", built["1.0"], repo, env=s3.env())  # the fix the message names
    assert _pull(node, repo, s3.env()).returncode == 0


def test_the_commit_is_create_only_on_the_server(s3, repo):
    from handlers.errors import RepositoryError
    from scripts.repository import open_store

    saved = {k: os.environ.get(k) for k in s3.env()}
    os.environ.update(s3.env())
    try:
        store = open_store(repo)
        store.put_bytes("x/version.json", b"first", exclusive=True)
        with pytest.raises(RepositoryError, match="exists already"):
            store.put_bytes("x/version.json", b"second", exclusive=True)  # S3's If-None-Match
        assert store.read("x/version.json") == b"first"
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture
def small_store(node):
    """The node's model store on a 1 MiB tmpfs (the archive is about 0.4 MB)."""
    node.model_store.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                              str(node.model_store)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a tmpfs, and this user cannot mount one: {mounted.stderr}")
    try:
        yield node.model_store
    finally:
        subprocess.run(["umount", str(node.model_store)], check=True)


def test_a_full_model_store_is_refused_before_and_during_the_pull(s3, built, repo, node,
                                                                  small_store):
    run_mar("publish", built["1.0"], repo, env=s3.env())
    filler = small_store / "other-model.bin"
    size = built["1.0"].stat().st_size
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_store).free - size // 2))
    before = _pull(node, repo, s3.env())
    assert before.returncode == 1 and "bytes free and the archive needs" in before.stderr
    filler.unlink()
    key = f"{repo.removeprefix('s3://models/')}/digits_cnn/1.0/digits_cnn-1.0.mar"
    proxy = Proxy(s3.port)  # another writer fills the disk once the download has begun
    proxy.on_request(f"GET /models/{key}".encode(), lambda: filler.write_bytes(
        b"\0" * (shutil.disk_usage(small_store).free - size // 2)))
    try:
        during = _pull(node, repo, s3.env(proxy.url))
    finally:
        proxy.close()
    assert during.returncode == 1 and "filled up while pulling" in during.stderr
    assert _store(node) == ["other-model.bin"]
    filler.unlink()  # the fix: free the space
    assert _pull(node, repo, s3.env()).returncode == 0
