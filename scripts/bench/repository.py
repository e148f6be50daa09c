"""repository: `mar publish` (signed) and `mar pull` (signature, hashes and build record verified)
of the sized archive against a loopback S3 server (moto's), each beside its floor: the same client
(boto3) copying the same object, plus `sha256sum` of the file. For the pull floor the faster of
boto3's two ways to copy an object down is taken (its multi-threaded `download_file`, or one
streaming GET into a file).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from scripts.bench.harness import BenchRun
from scripts.bench.loopback_s3 import LoopbackS3
from scripts.build import build_archive

__all__ = ["measure", "report"]

_BUCKET = "bench"


def measure(run: BenchRun) -> dict:
    root = run.root / "repository"
    root.mkdir()
    archive = build_archive(run.model["spec"], export_path=root / "built").archive
    private, public = _key_pair(root)
    server = LoopbackS3(root).start()
    try:
        with _environment(server.env()):
            client = server.client()
            client.create_bucket(Bucket=_BUCKET)
            return _rounds(run.repeats, archive, root, client, private, public)
    finally:
        server.stop()


def _rounds(repeats: int, archive: Path, root: Path, client, private: Path, public: Path) -> dict:
    """A warm-up round, then `repeats` rounds; each measures the floors and ours in turn."""
    from scripts.repository import TrustedKeys, publish, pull

    timings: dict[str, list[float]] = {k: [] for k in
                                       ("publish", "publish floor", "pull", "pull floor")}
    for index in range(repeats + 1):
        floor_key, ours = f"floor-{index}/{archive.name}", f"s3://{_BUCKET}/ours-{index}"
        copy, store = _fresh(root / "download"), _fresh(root / "model_store")
        steps = {  # each returns its seconds
            "publish floor": lambda: _timed(lambda: client.upload_file(str(archive), _BUCKET,
                                                                       floor_key))
            + _timed(lambda: _sha256sum(archive)),
            "publish": lambda: _timed(lambda: publish(archive, ours, sign_key=private)),
            "pull floor": lambda: _pull_floor(client, floor_key, copy / archive.name),
            "pull": lambda: _timed(lambda: pull(ours, "bench_ours", "1.0", model_store=store,
                                                trust=TrustedKeys([public]))),
        }
        for name, step in steps.items():
            seconds = step()
            if index:
                timings[name].append(seconds)
        _empty_bucket(client)  # moto holds every object in memory
    return {name: {"median_s": statistics.median(runs), "runs_s": runs}
            for name, runs in timings.items()} | {"archive_bytes": archive.stat().st_size}


def _pull_floor(client, key: str, target: Path) -> float:
    """The faster of boto3's two copies of the object down, then sha256sum of the file."""
    threaded = _timed(lambda: client.download_file(_BUCKET, key, str(target)))
    target.unlink()
    streamed = _timed(lambda: _streamed_copy(client, key, target))
    return min(threaded, streamed) + _timed(lambda: _sha256sum(target))


def _streamed_copy(client, key: str, target: Path) -> None:
    body = client.get_object(Bucket=_BUCKET, Key=key)["Body"]
    with open(target, "wb") as out:
        for chunk in body.iter_chunks(8 << 20):
            out.write(chunk)


def _timed(action: Callable[[], object]) -> float:
    os.sync()  # what earlier steps left dirty is flushed before the clock starts
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _sha256sum(path: Path) -> None:
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)


def _empty_bucket(client) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=_BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=_BUCKET, Key=item["Key"])


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _key_pair(root: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = root / "signing.pem", root / "signing.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@contextmanager
def _environment(variables: dict[str, str]):
    """The standard AWS variables, as a user sets them, for the duration."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def report(results: dict) -> None:
    figures = results["repository"]
    print(f"\nrepository, {figures['archive_bytes'] / 2**30:.2f} GiB archive, loopback S3 (moto), "
          f"boto3 (median of {results['repeats']})")
    for step, floor in (("publish", "publish floor"), ("pull", "pull floor")):
        ours, base = figures[step]["median_s"], figures[floor]["median_s"]
        label = {"publish": "mar publish --sign-key", "pull": "mar pull (verified)"}[step]
        print(f"  {label:<34} {ours:7.2f} s   {ours / base:5.2f}x floor")
        print(f"  {'floor: boto3 copy + sha256sum':<34} {base:7.2f} s")
