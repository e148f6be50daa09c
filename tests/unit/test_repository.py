"""Publishing to and pulling from a folder repository, in-process: signatures, atomic commits,
and every refusal leaving the model store as it was. S3 and HTTPS: tests/integration."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from handlers.errors import IntegrityError, RepositoryError, UsageError
from scripts.archive import EntryDigests
from scripts.build import build_archive
from scripts.repository import (TrustedKeys, check_installed, publish, published_versions, pull,
                                open_store)
from scripts.settings import MarSettings
from tests.keys import make_key_pair

MODEL_SIGNING = Path(sys.executable).parent / "model_signing"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The digits archive in both formats, a second version, and key pairs."""
    import torch

    from model_defs import create_model
    from tests.helpers import digits_spec_data, save_weights, write_spec

    folder = tmp_path_factory.mktemp("built")
    torch.manual_seed(0)
    save_weights(create_model("digits_cnn", **digits_spec_data()["params"]), folder / "w.pt")
    spec = write_spec(folder, digits_spec_data(weights="w.pt"))
    newer = write_spec(folder, digits_spec_data(weights="w.pt", version="1.1"), "newer.yaml")
    store = folder / "store"
    return {"mar": build_archive(spec, export_path=store).archive,
            "folder": build_archive(spec, export_path=folder / "folders",
                                    archive_format="folder").archive,
            "newer": build_archive(newer, export_path=store).archive,
            "signer": make_key_pair(folder, "signer"), "stranger": make_key_pair(folder, "other")}


@pytest.fixture
def repo(tmp_path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def node_store(tmp_path) -> Path:
    return tmp_path / "node" / "model_store"


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _pull(repo, store, trust=(), version="1.0"):
    return pull(str(repo), "digits_cnn", version, model_store=store, trust=TrustedKeys(trust))


def test_a_signed_archive_pulls_verified_and_the_upstream_cli_agrees(built, repo, node_store):
    published = publish(built["mar"], str(repo), sign_key=built["signer"].private)
    pulled = _pull(repo, node_store, [built["signer"].public])
    assert pulled.verified_by == published.record.signer
    assert pulled.archive.read_bytes() == built["mar"].read_bytes()
    assert _listing(node_store) == ["digits_cnn-1.0.mar", "digits_cnn-1.0.mar.sig"]
    upstream = subprocess.run([str(MODEL_SIGNING), "verify", "key", str(pulled.archive),
                               "--signature", f"{pulled.archive}.sig", "--public_key",
                               str(built["signer"].public)], capture_output=True, text=True)
    assert upstream.returncode == 0 and "Verification succeeded" in upstream.stdout


def test_the_fingerprint_is_model_signings_key_hint(built, repo):
    published = publish(built["mar"], str(repo), sign_key=built["signer"].private)
    bundle = json.loads((repo / "digits_cnn" / "1.0" / "digits_cnn-1.0.mar.sig").read_text())
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == published.record.signer
    assert list(TrustedKeys([built["signer"].public]).paths) == [published.record.signer]


def test_a_folder_archive_is_signed_file_by_file(built, repo, node_store):
    publish(built["folder"], str(repo), sign_key=built["signer"].private)
    pulled = _pull(repo, node_store, [built["signer"].public])
    assert pulled.archive.is_dir()
    assert _listing(pulled.archive) == _listing(built["folder"])
    tampered = repo / "digits_cnn" / "1.0" / "digits_cnn-1.0" / "handlers" / "guard.py"
    tampered.write_text(tampered.read_text().replace("status: int", "status: Any", 1))
    shutil.rmtree(pulled.archive)
    (node_store / "digits_cnn-1.0.sig").unlink()
    with pytest.raises(IntegrityError, match=r"changed bytes: .*\(handlers/guard.py: sha256"):
        _pull(repo, node_store, [built["signer"].public])
    assert _listing(node_store) == []


@pytest.mark.parametrize("case", ["unsigned", "untrusted key", "bad signature", "changed byte"])
def test_with_trusted_keys_each_bad_archive_is_refused_by_name_and_leaves_nothing(
        built, repo, node_store, case):
    signer, stranger = built["signer"], built["stranger"]
    key = {"unsigned": None, "untrusted key": stranger.private}.get(case, signer.private)
    publish(built["mar"], str(repo), sign_key=key)
    version = repo / "digits_cnn" / "1.0"
    if case == "bad signature":
        bundle = json.loads((version / "digits_cnn-1.0.mar.sig").read_text())
        signature = bundle["dsseEnvelope"]["signatures"][0]
        signature["sig"] = ("B" if signature["sig"][0] != "B" else "C") + signature["sig"][1:]
        (version / "digits_cnn-1.0.mar.sig").write_text(json.dumps(bundle))
    if case == "changed byte":
        data = bytearray((version / "digits_cnn-1.0.mar").read_bytes())
        data[len(data) // 2] ^= 0x01
        (version / "digits_cnn-1.0.mar").write_bytes(bytes(data))
    node_store.mkdir(parents=True)
    (node_store / "other-1.0.mar").write_bytes(b"an archive already there")
    before = {p: p.read_bytes() for p in node_store.iterdir()}
    with pytest.raises(IntegrityError) as refused:
        _pull(repo, node_store, [signer.public])
    message = str(refused.value)
    assert message.startswith(case.replace("changed byte", "changed bytes"))
    if case == "untrusted key":
        assert TrustedKeys([stranger.public]).describe().split()[0] in message
    assert {p: p.read_bytes() for p in node_store.iterdir()} == before


def test_an_unsigned_version_is_refused_until_its_publisher_signs(built, repo, node_store):
    publish(built["mar"], str(repo))
    with pytest.raises(IntegrityError, match="publish it with `mar publish ARCHIVE REPO "
                                             "--sign-key KEY.pem`"):
        _pull(repo, node_store, [built["signer"].public])
    publish(built["newer"], str(repo), sign_key=built["signer"].private)  # the fix, a new version
    assert _pull(repo, node_store, [built["signer"].public], version="1.1").verified_by


def test_the_untrusted_key_fix_works_when_applied(built, repo, node_store):
    publish(built["mar"], str(repo), sign_key=built["stranger"].private)
    with pytest.raises(IntegrityError, match="add their public key with --trust PUB.pem"):
        _pull(repo, node_store, [built["signer"].public])
    assert _pull(repo, node_store, [built["signer"].public, built["stranger"].public]).verified_by


def test_without_trusted_keys_a_pull_keeps_the_signature_for_later_checks(built, repo, node_store):
    publish(built["mar"], str(repo), sign_key=built["signer"].private)
    pulled = _pull(repo, node_store)
    assert pulled.verified_by is None
    state = check_installed(pulled.archive, TrustedKeys([built["signer"].public]),
                            require_signed=True)
    assert state.startswith("signed by sha256:") and state.endswith("verified")


def test_an_object_replaced_after_publishing_is_refused(built, repo, node_store):
    publish(built["mar"], str(repo))
    replaced = repo / "digits_cnn" / "1.0" / "digits_cnn-1.0.mar"
    replaced.write_bytes(built["newer"].read_bytes())
    with pytest.raises(IntegrityError, match="changed after it was published .*against "
                                             "version.json.*replaced between the listing"):
        _pull(repo, node_store)
    assert _listing(node_store) == []


def test_an_archive_that_disagrees_with_its_build_record_is_refused(built, repo, node_store,
                                                                   tmp_path):
    altered = tmp_path / "digits_cnn-1.0.mar"
    with zipfile.ZipFile(built["mar"]) as source, zipfile.ZipFile(altered, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "spec.yaml":
                data = data.replace(b"max_batch_delay_ms: 5", b"max_batch_delay_ms: 6")
            target.writestr(item, data)  # stored, sizes in the headers, as mar build writes
    publish(altered, str(repo), sign_key=built["signer"].private)  # signed after the change
    with pytest.raises(IntegrityError, match=r"does not match its own build record \(spec.yaml "
                                             r"differs\)"):
        _pull(repo, node_store, [built["signer"].public])
    assert _listing(node_store) == []


def test_versions_never_change_and_a_missing_one_lists_those_that_exist(built, repo, node_store):
    publish(built["mar"], str(repo))
    with pytest.raises(RepositoryError, match=r"exists: published versions never change. Give "
                                              r"the spec a new `version` \(e.g. 1.1\)"):
        publish(built["mar"], str(repo))
    publish(built["newer"], str(repo))  # the fix: a new version
    with pytest.raises(RepositoryError, match="Published versions of digits_cnn: 1.0, 1.1. Pull "
                                              "one of those"):
        _pull(repo, node_store, version="2.0")
    assert [v.version for v in published_versions(open_store(str(repo)))] == ["1.0", "1.1"]
    assert _pull(repo, node_store, version="1.1").archive.is_file()  # one of those


def test_an_unfinished_publish_is_invisible_and_publishing_again_succeeds(built, repo,
                                                                         node_store):
    publish(built["mar"], str(repo))
    (repo / "digits_cnn" / "1.0" / "version.json").unlink()  # what a publish killed before its commit leaves
    assert published_versions(open_store(str(repo))) == []
    with pytest.raises(RepositoryError, match="a publish of it started and did not finish"):
        _pull(repo, node_store)
    publish(built["mar"], str(repo))
    assert _pull(repo, node_store).archive.is_file()


def test_listing_shows_signer_commit_torch_runtime_precision_size_and_time(built, repo):
    published = publish(built["mar"], str(repo), sign_key=built["signer"].private)
    (row,) = [v.row() for v in published_versions(open_store(str(repo)))]
    assert row["signer"] == published.record.signer and row["torch_version"].startswith("2.")
    assert (row["runtime"], row["precision"]) == ("eager", "fp32")
    assert row["bytes"] == built["mar"].stat().st_size and row["published_at"].endswith("Z")
    assert "git_commit" in row


def test_a_pull_never_replaces_what_the_model_store_holds(built, repo, node_store):
    publish(built["mar"], str(repo))
    node_store.mkdir(parents=True)
    (node_store / "digits_cnn-1.0.mar").write_bytes(b"registered and serving")
    with pytest.raises(RepositoryError, match="is in the model store already. Pull another "
                                              "version, or remove it first"):
        _pull(repo, node_store)
    assert (node_store / "digits_cnn-1.0.mar").read_bytes() == b"registered and serving"
    (node_store / "digits_cnn-1.0.mar").unlink()  # the fix
    assert _pull(repo, node_store).archive.read_bytes() == built["mar"].read_bytes()


def test_an_installed_archive_changed_after_the_pull_fails_its_check(built, repo, node_store):
    publish(built["mar"], str(repo), sign_key=built["signer"].private)
    pulled = _pull(repo, node_store, [built["signer"].public])
    with open(pulled.archive, "r+b") as archive:
        archive.seek(100)
        archive.write(b"\x00")
    with pytest.raises(IntegrityError, match="does not match its signature"):
        check_installed(pulled.archive, TrustedKeys([built["signer"].public]), require_signed=False)


def test_require_signed_refuses_unsigned_archives_and_names_the_setting(built, tmp_path):
    (tmp_path / "signer.pub").write_bytes(built["signer"].public.read_bytes())
    (tmp_path / "mar.yaml").write_text("trusted_keys: [signer.pub]\nrequire_signed: true\n")
    settings = MarSettings.beside(tmp_path / "config.properties")
    trust = TrustedKeys(settings.trusted_keys)
    with pytest.raises(IntegrityError, match="require_signed: true"):
        check_installed(built["mar"], trust, require_signed=settings.require_signed)
    (tmp_path / "mar.yaml").write_text("trusted_keys: [signer.pub]\nrequire_signed: false\n")
    settings = MarSettings.beside(tmp_path / "config.properties")
    assert check_installed(built["mar"], trust, require_signed=settings.require_signed) == "unsigned"


def test_mar_yaml_names_every_problem(tmp_path):
    (tmp_path / "mar.yaml").write_text("trusted_key: [a.pub]\nrequire_signed: true\n")
    with pytest.raises(UsageError) as refused:
        MarSettings.beside(tmp_path / "config.properties")
    assert "unknown key `trusted_key`: remove it or fix its spelling" in str(refused.value)
    assert "`require_signed: true` needs `trusted_keys`" in str(refused.value)
    (tmp_path / "mar.yaml").write_text("trusted_keys: [a.pub]\nrequire_signed: true\n")
    assert MarSettings.beside(tmp_path / "config.properties").require_signed  # both fixed


def test_a_signing_key_that_is_not_one_is_refused_with_how_to_make_one(built, repo, tmp_path):
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(UsageError, match="openssl ecparam -name prime256v1 -genkey"):
        publish(built["mar"], str(repo), sign_key=tmp_path / "key.pem")
    assert not (repo / "digits_cnn").exists()


def test_plain_http_and_unknown_addresses_are_refused():
    with pytest.raises(RepositoryError, match="plain http is refused"):
        open_store("http://example.com/models")
    with pytest.raises(RepositoryError, match="use a folder, s3://BUCKET/PREFIX or https://"):
        open_store("ftp://example.com/models")


@pytest.mark.parametrize("chunk", [1, 7, 30, 31, 4096, 1 << 20])
def test_entry_digests_match_zipfile_whatever_the_chunking(built, chunk):
    import hashlib

    data = built["mar"].read_bytes()
    entries = EntryDigests(keep=("build-info.json",))
    for start in range(0, len(data), chunk):
        entries.feed(data[start:start + chunk])
    with zipfile.ZipFile(built["mar"]) as mar:
        expected = {i.filename: hashlib.sha256(mar.read(i)).hexdigest() for i in mar.infolist()}
        assert entries.kept["build-info.json"] == mar.read("build-info.json")
    assert entries.finish() == expected
    truncated = EntryDigests()
    truncated.feed(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="truncated"):
        truncated.finish()
