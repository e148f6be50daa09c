"""A repository folder that `mar publish` wrote, served read-only over HTTPS with a certificate
from a CA the test makes; pulls verify it (SSL_CERT_FILE names the CA, as for any OpenSSL
client)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import digits_versions, run_mar
from tests.keys import make_key_pair
from tests.servers import HTTPSServer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("https")
    built = digits_versions(folder, ("1.0", "1.1"))
    keys = make_key_pair(folder, "publisher")
    for archive in built.values():
        run_mar("publish", archive, folder / "repo", "--sign-key", keys.private)
    server = HTTPSServer(folder / "repo", folder)
    try:
        yield server, keys, built
    finally:
        server.stop()


@pytest.fixture
def node(tmp_path):
    from scripts.config import read_config, write_private_config

    (tmp_path / "node").mkdir()
    return read_config(write_private_config(tmp_path / "node"))


def test_a_pull_over_https_verifies_the_certificate_and_the_signature(served, node):
    server, keys, built = served
    env = {"SSL_CERT_FILE": str(server.ca_file)}
    listed = json.loads(run_mar("models", "--repo", server.url, "--json", env=env).stdout)
    assert [(r["name"], r["version"]) for r in listed] == [("digits_cnn", "1.0"), ("digits_cnn", "1.1")]
    pulled = run_mar("pull", server.url, "digits_cnn", "1.1", "--config", node.path, "--trust",
                     keys.public, env=env)
    assert "signature verified" in pulled.stdout
    assert (node.model_store / "digits_cnn-1.1.mar").read_bytes() == built["1.1"].read_bytes()


def test_an_unknown_certificate_authority_is_refused_and_ssl_cert_file_fixes_it(served, node):
    server, keys, _ = served
    refused = run_mar("pull", server.url, "digits_cnn", "1.0", "--config", node.path, "--trust",
                      keys.public, check=False, env={"SSL_CERT_FILE": "/nonexistent"})
    assert refused.returncode == 1
    assert "could not be verified" in refused.stderr and "set SSL_CERT_FILE" in refused.stderr
    assert not node.model_store.exists() or not any(node.model_store.iterdir())
    run_mar("pull", server.url, "digits_cnn", "1.0", "--config", node.path, "--trust",
            keys.public, env={"SSL_CERT_FILE": str(server.ca_file)})


def test_https_is_read_only_and_a_missing_version_lists_the_index(served, node):
    server, _, built = served
    env = {"SSL_CERT_FILE": str(server.ca_file)}
    refused = run_mar("publish", built["1.0"], server.url, check=False, env=env)
    assert refused.returncode == 1 and "is read-only: HTTPS repositories are for pulls" in refused.stderr
    missing = run_mar("pull", server.url, "digits_cnn", "3.0", "--config", node.path,
                      check=False, env=env)
    assert missing.returncode == 1 and "Published versions of digits_cnn: 1.0, 1.1" in missing.stderr
