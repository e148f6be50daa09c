"""`mar export-kserve`: the same archives, laid out for KServe's PyTorch (TorchServe) runtime.

KServe mounts the storage URI at /mnt/models and starts TorchServe with
`--ts-config /mnt/models/config/config.properties`; models come up from that file's `model_snapshot`,
not through the management API. The layout:

    OUT/config/config.properties      TorchServe settings for the container, with model_snapshot
    OUT/model-store/<name>-<version>.mar
    OUT/inferenceservice.yaml         the InferenceService (v1beta1) to `kubectl apply`
    OUT/model.sig                     with --sign-key: a model-signing bundle over config/ and
                                      model-store/ (not the YAML, whose storageUri users edit)

A signed export's container verifies /mnt/models with the upstream `model_signing` CLI and a
public key from a Secret before it starts TorchServe, and exits non-zero (the pod fails) when
anything differs. With --publish the layout goes to a repository address, the signature last.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from scripts.build import build_archive
from handlers.errors import IntegrityError, KServeError
from handlers.spec import version_key
from scripts.archive import Archive, open_archive
from scripts.verify import verify_archive

__all__ = ["KServeExport", "export_kserve", "serving_command", "STORAGE_URI_PLACEHOLDER",
           "VERIFIER_IMAGE_PLACEHOLDER", "SIGNATURE_FILE", "TRUST_MOUNT", "TRUST_KEY_FILE"]

MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storage URI's contents
STORAGE_URI_PLACEHOLDER = "s3://YOUR-BUCKET/PATH"  # replace with where you upload OUT/
SIGNATURE_FILE = "model.sig"
SERVICE_FILE = "inferenceservice.yaml"
TRUST_MOUNT = "/mnt/mar-trust"  # the Secret with the publisher's public key, mounted read-only
TRUST_KEY_FILE = "publisher.pub"
# TorchServe's KServe image plus `pip install model-signing==1.1.1 pyopenssl` (README)
VERIFIER_IMAGE_PLACEHOLDER = "YOUR-REGISTRY/torchserve-kfs-model-signing:0.12.0"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # Kubernetes object names


@dataclass(frozen=True)
class KServeExport:
    out: Path
    archives: list[Path]
    service_name: str
    signed: bool = False
    trust_secret: str | None = None  # the Secret the signed pod reads the public key from
    published: str | None = None  # the repository address the layout went to


def serving_command(*, signed: bool) -> str:
    """What the container runs (the image's entrypoint evaluates it, `set -e`): TorchServe on
    the layout, after the upstream verifier passed when the layout is signed."""
    torchserve = (f"torchserve --start --model-store={MOUNT}/model-store "
                  f"--ts-config={MOUNT}/config/config.properties")
    if not signed:
        return torchserve
    return (f"model_signing verify key {MOUNT} --signature {MOUNT}/{SIGNATURE_FILE} "
            f"--public_key {TRUST_MOUNT}/{TRUST_KEY_FILE} || exit 1; {torchserve}")


def export_kserve(sources: list[Path], out: Path, *, service_name: str | None = None,
                  min_replicas: int = 1, max_replicas: int = 3,
                  concurrency_target: int | None = None, sign_key: Path | None = None,
                  publish: str | None = None, image: str | None = None) -> KServeExport:
    """Build (specs) or copy (verified archives) into OUT's KServe layout, then write the
    config and the InferenceService; sign it with `sign_key` and upload it to `publish`. Raises
    MarError naming the problem and the fix."""
    if out.exists() and any(out.iterdir()):
        raise KServeError(f"{out} is not empty; export into a new folder (nothing is overwritten).")
    store = out / "model-store"
    store.mkdir(parents=True)
    archives = [_archive_for(source, store) for source in sources]
    _check_unique(archives)
    name = service_name or archives[0].name.lower().replace("_", "-").replace(".", "-")
    if not _DNS_LABEL.match(name) or len(name) > 45:
        raise KServeError(f"InferenceService name {name!r} must be lower-case letters, digits and '-', "
                       "start with a letter and be at most 45 characters; pass --name.")
    (out / "config").mkdir()
    (out / "config" / "config.properties").write_text(kserve_config(archives))
    target = concurrency_target or max(a.spec.serving.batch_size for a in archives)
    trust_secret = f"{name}-model-signing" if sign_key else None
    service = inference_service(name, archives, min_replicas=min_replicas,
                                max_replicas=max_replicas, concurrency_target=target,
                                storage_uri=publish if publish and publish.startswith("s3://")
                                else STORAGE_URI_PLACEHOLDER,
                                trust_secret=trust_secret, image=image)
    (out / SERVICE_FILE).write_text(yaml.safe_dump(service, sort_keys=False))
    if sign_key:
        from scripts.repository.signing import sign

        sign(out, sign_key, out / SIGNATURE_FILE, ignore=(SERVICE_FILE, SIGNATURE_FILE))
    if publish:
        from scripts.repository.publish import publish_folder

        publish_folder(out, publish, commit=SIGNATURE_FILE if sign_key else SERVICE_FILE)
    return KServeExport(out, [a.path for a in archives], name, bool(sign_key), trust_secret, publish)


def kserve_config(archives: list[Archive]) -> str:
    """TorchServe's config.properties for the KServe container, with every model in its
    model_snapshot (workers, batching, timeout, default version) so it loads at start-up."""
    newest = {name: max((a.version for a in archives if a.name == name), key=version_key)
              for name in {a.name for a in archives}}  # each model's default version
    models: dict[str, dict] = {}
    for archive in archives:
        models.setdefault(archive.name, {})[archive.version] = archive.spec.serving.snapshot_entry(
            archive.path.name, default=newest[archive.name] == archive.version)
    snapshot = {"name": "startup.cfg", "modelCount": len(archives), "models": models}
    return f"""# Written by `mar export-kserve` for KServe's PyTorch (TorchServe) runtime.
# In the pod, KServe's proxy and the mesh face the network, so TorchServe binds all interfaces
# inside the container; the pod is not reachable except through KServe.
inference_address=http://0.0.0.0:8085
management_address=http://0.0.0.0:8085
metrics_address=http://0.0.0.0:8082
grpc_inference_port=7070
grpc_management_port=7071
# KServe's runtime sets TS_SERVICE_ENVELOPE (kserve or kservev2) for the pod; with environment
# config on, TorchServe would wrap the handler in that envelope, which unwraps only the first
# request of each batch. The handler reads KServe v1 and v2 bodies itself, so TS_* variables are
# ignored: every setting is in this file.
enable_envvars_config=false
# Prometheus text on the metrics port, for KServe's and Knative's scrapers, with the handler's
# own per-batch figures.
enable_metrics_api=true
metrics_mode=prometheus
model_metrics_auto_detect=true
number_of_netty_threads=4
job_queue_size=100
# Models come from model_snapshot below at start-up; nothing registers or deletes them at run time.
enable_model_api=false
# KServe's data plane cannot send TorchServe's per-start tokens; authenticate at the ingress instead.
disable_token_authorization=true
install_py_dep_per_model=false
max_request_size=6553500
model_store={MOUNT}/model-store
model_snapshot={json.dumps(snapshot, separators=(",", ":"))}
"""


def inference_service(name: str, archives: list[Archive], *, min_replicas: int, max_replicas: int,
                      concurrency_target: int, storage_uri: str = STORAGE_URI_PLACEHOLDER,
                      trust_secret: str | None = None, image: str | None = None) -> dict:
    """A serving.kserve.io/v1beta1 InferenceService for the exported layout; with `trust_secret`
    its container verifies the layout first (serving_command), with the key from that Secret."""
    if min_replicas > max_replicas:
        raise KServeError(f"--min-replicas {min_replicas} exceeds --max-replicas {max_replicas}.")
    gpu = any(a.spec.serving.device == "gpu" for a in archives)
    limits = {"cpu": "2", "memory": "4Gi", **({"nvidia.com/gpu": "1"} if gpu else {})}
    model = {"modelFormat": {"name": "pytorch"}, "protocolVersion": "v1",
             "storageUri": storage_uri,
             "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": limits}}
    predictor = {"minReplicas": min_replicas, "maxReplicas": max_replicas,
                 "scaleMetric": "concurrency",  # Knative scales on in-flight requests per replica
                 "scaleTarget": concurrency_target, "model": model}
    if trust_secret:
        model.update(image=image or VERIFIER_IMAGE_PLACEHOLDER, args=[serving_command(signed=True)],
                     volumeMounts=[{"name": "mar-trust", "mountPath": TRUST_MOUNT,
                                    "readOnly": True}])
        predictor["volumes"] = [{"name": "mar-trust", "secret": {"secretName": trust_secret}}]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {
            "mar.models": ", ".join(f"{a.name} {a.version}" for a in archives)}},
        "spec": {"predictor": predictor},
    }


def _archive_for(source: Path, store: Path) -> Archive:
    if source.suffix in (".yaml", ".yml"):
        built = build_archive(source, export_path=store)
        return open_archive(built.archive)
    verdict = verify_archive(source)
    if not verdict.ok:
        raise IntegrityError(f"{source} failed verification, so it was not exported:\n{verdict.report}")
    if source.is_dir():
        raise KServeError(f"{source} is an archive folder; KServe's storage needs .mar files. Build "
                       "with --format mar.")
    target = store / source.name
    shutil.copyfile(source, target)
    return open_archive(target)


def _check_unique(archives: list[Archive]) -> None:
    seen: set[tuple[str, str]] = set()
    for archive in archives:
        key = (archive.name, archive.version)
        if key in seen:
            raise KServeError(f"{archive.name} {archive.version} is exported twice; "
                           "give each source its own name or version.")
        seen.add(key)
