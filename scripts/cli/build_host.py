"""`mar` commands that run on the build host and need no server: build, verify, convert-legacy,
export-kserve, bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from handlers.errors import UsageError
from handlers.runtimes import RUNTIMES
from scripts.cli.common import command
from scripts.config import read_config

__all__ = ['add_build', 'add_verify', 'add_convert', 'add_export_kserve', 'add_bench']


def add_build(commands) -> None:
    sub = command(commands, "build", _cmd_build, "validate specs and weights, then write archives")
    sub.add_argument("specs", nargs="+", type=Path, metavar="SPEC.yaml")
    sub.add_argument("--weights", type=Path,
                     help="weights file instead of the spec's `weights` (only with one spec)")
    sub.add_argument("--export-path", type=Path, help="folder the archives are written to "
                     "(default: the model store named in --config)")
    sub.add_argument("--format", choices=["mar", "folder"], default="mar", dest="archive_format",
                     help="mar: one zip file; folder: TorchServe's no-archive layout, which it "
                     "links instead of extracting (fastest start from a shared model store)")
    sub.add_argument("--suggest", action="store_true", help="instead: build and time every "
                     "precision and runtime this host runs, and print the fastest that passes "
                     "its accuracy gate (nothing is written to the model store)")


def _cmd_build(args) -> int:
    from scripts.build import build_archive

    if args.weights and len(args.specs) > 1:
        raise UsageError(f"--weights applies to one spec, but {len(args.specs)} were given. "
                       "Build them one at a time, or put each weights path in its spec.")
    if args.suggest:
        return _suggest(args.specs)
    export_path = args.export_path or read_config(args.config).model_store
    for spec in args.specs:
        _print_build(build_archive(spec, weights=args.weights, export_path=export_path,
                                   archive_format=args.archive_format))
    return 0


def _suggest(specs: list[Path]) -> int:
    import yaml

    from handlers.precision import host_isa
    from scripts.precision.suggest import sample_settings, spec_lines, suggest

    isa = host_isa()
    for spec in specs:
        print(f"{spec} on this host ({isa['cpu_capability']}: {' '.join(isa['flags'])}):")
        candidates = suggest(spec)
        base = next((c for c in candidates if c.label == "fp32 eager" and c.outcome == "ok"), None)
        for c in candidates:
            if c.outcome != "ok":
                print(f"  {c.label:<18} {c.outcome}")
                continue
            ratio = f"{c.samples_per_s / base.samples_per_s:5.2f}x fp32 eager" if base else ""
            print(f"  {c.label:<18} {c.ms_per_batch:8.3g} ms/batch {c.samples_per_s:9.0f} "
                  f"samples/s {ratio}  build {c.build_s:5.1f} s  gate: {c.gate}")
        best = next((c for c in candidates if c.outcome == "ok"), None)
        if best is None:
            print("  nothing built here")
            continue
        print(f"fastest that passes its gate: {best.label}. In the spec:\n"
              f"{spec_lines(best, sample_settings(yaml.safe_load(spec.read_text())))}")
    return 0


def _print_build(result) -> None:
    spec = result.spec
    print(f"built {result.archive}: {spec.name} {spec.version}, arch {spec.arch}, "
          f"{result.parameters:,} parameters")
    if result.archive_sha256:
        print(f"  archive sha256 {result.archive_sha256} "
              f"({result.archive.stat().st_size / 1e6:.1f} MB)")
    print(f"  weights {result.weights} (sha256 {result.weights_sha256})")
    for note in result.checkpoint_notes:
        print(f"  normalised: {note}")
    if result.let_through_missing:
        print(f"  let through, missing (checkpoint.allow_missing): "
              f"{', '.join(result.let_through_missing)}")
    if result.ignored_unexpected:
        print(f"  let through, unexpected (checkpoint.ignore_unexpected): "
              f"{', '.join(result.ignored_unexpected)}")
    if result.calibration:
        print(f"  int8 calibrated on {result.calibration}")
    if result.gate is not None:
        bars = ", ".join(f"{name} {bar:g}" for name, bar in result.gate.bars.items())
        print(f"  accuracy gate passed: {result.gate.describe()} (bars: {bars})")
    inputs, outputs = result.golden.largest_case
    print(f"  golden check recorded: {len(result.golden.cases)} case(s); the largest "
          f"{_shapes(inputs)} -> {_shapes(outputs)}")


def _shapes(tensors: dict) -> str:
    """Each tensor's shape, or a per-sample list's count and shapes."""
    return ", ".join(f"{name} {len(value)} samples {[list(t.shape) for t in value[:3]]}"
                     + ("..." if len(value) > 3 else "") if isinstance(value, list)
                     else f"{name} {list(value.shape)}" for name, value in tensors.items())


def add_verify(commands) -> None:
    sub = command(commands, "verify", _cmd_verify, "re-run an archive's build-record and golden "
                   "checks from the archive alone, in a fresh process", server=False)
    sub.add_argument("archive", type=Path, metavar="ARCHIVE")


def _cmd_verify(args) -> int:
    from scripts.verify import verify_archive

    result = verify_archive(args.archive)
    print(result.report, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def add_convert(commands) -> None:
    sub = command(commands, "convert-legacy", _cmd_convert, "unpickle a TRUSTED "
                   "torch.save(model) file once and write a clean state_dict", server=False)
    sub.add_argument("source", type=Path, metavar="LEGACY.pt")
    sub.add_argument("--arch", required=True, help="registered architecture to check against")
    sub.add_argument("--params", default="{}", help="constructor params as JSON")
    sub.add_argument("--out", type=Path, required=True,
                     help="the clean checkpoint to write (.pt or .safetensors)")
    sub.add_argument("--trust-this-file", action="store_true",
                     help="required: unpickling runs any code the file contains")


def _cmd_convert(args) -> int:
    from scripts.convert import convert_legacy

    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as err:
        raise UsageError(f"--params {args.params!r} is not JSON ({err}); e.g. '{{\"channels\": 16}}'"
                       ) from None
    count = convert_legacy(args.source, args.out, arch=args.arch, params=params,
                           trusted=args.trust_this_file)
    print(f"wrote {args.out}: {count} tensors that load strictly into {args.arch!r}; point the "
          "spec's `weights` at it")
    return 0


def add_export_kserve(commands) -> None:
    sub = command(commands, "export-kserve", _cmd_export_kserve, "write the layout KServe's "
                   "PyTorch runtime serves: config, model store, InferenceService", server=False)
    sub.add_argument("sources", nargs="+", type=Path, metavar="SPEC_OR_ARCHIVE")
    sub.add_argument("--out", type=Path, required=True, help="a new, empty folder")
    sub.add_argument("--name", help="InferenceService name (default: the first model's)")
    sub.add_argument("--min-replicas", type=int, default=1)
    sub.add_argument("--max-replicas", type=int, default=3)
    sub.add_argument("--concurrency-target", type=int, help="in-flight requests per replica "
                     "before Knative adds one (default: the largest batch size)")
    sub.add_argument("--sign-key", type=Path, metavar="KEY.pem", help="sign the layout (EC "
                     "private key, PEM); the pod then verifies it before TorchServe starts")
    sub.add_argument("--publish", metavar="REPO", help="upload the layout to this address (a "
                     "folder or s3://BUCKET/PREFIX), the signature last; s3:// becomes storageUri")
    sub.add_argument("--image", help="the signed pod's image: TorchServe's KServe image with "
                     "model-signing installed (see README)")


def _cmd_export_kserve(args) -> int:
    from scripts.kserve import STORAGE_URI_PLACEHOLDER, TRUST_KEY_FILE, export_kserve

    if args.image and not args.sign_key:
        raise UsageError("--image is the image of a signed pod, which verifies the layout; "
                         "add --sign-key KEY.pem, or drop --image (the runtime's image serves).")
    result = export_kserve(args.sources, args.out, service_name=args.name,
                           min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                           concurrency_target=args.concurrency_target, sign_key=args.sign_key,
                           publish=args.publish, image=args.image)
    print(f"wrote {result.out}: config/config.properties, {len(result.archives)} archive(s) in "
          f"model-store/, inferenceservice.yaml ({result.service_name})"
          + (", model.sig" if result.signed else "") + ".")
    if result.published:
        print(f"published the layout to {result.published}")
    if not (result.published or "").startswith("s3://"):
        print(f"Upload the folder and replace storageUri {STORAGE_URI_PLACEHOLDER} with its address.")
    if result.signed:
        print(f"The pod verifies it with the public key in Secret {result.trust_secret}: "
              f"kubectl create secret generic {result.trust_secret} "
              f"--from-file={TRUST_KEY_FILE}=PUBLIC_KEY.pem")
    return 0


def add_bench(commands) -> None:
    sub = command(commands, "bench", _cmd_bench, "measure build, cold start, memory and "
                   "throughput against stock TorchServe on this machine (prints ratios)",
                   server=False)
    sub.add_argument("--size-mb", type=int, default=1024, help="size of the benchmark weights")
    sub.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    sub.add_argument("--throughput-seconds", type=float, default=20,
                     help="ab run length per concurrency; 0 skips the throughput part")
    sub.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    sub.add_argument("--parts", nargs="+", metavar="PART",
                     help="the parts to run (default: all): build, cold-start, throughput, "
                     "protocols, images, hostile, repository, detection")
    sub.add_argument("--out", type=Path, default=Path("bench_results/bench.json"))
    sub.add_argument("--runtimes", nargs="*", metavar="RUNTIME", choices=RUNTIMES,
                     help="instead: compare serving runtimes (all when none are named) on "
                     "--runtime-models, at the models' spec batching")
    sub.add_argument("--runtime-models", nargs="+", default=["digits", "resnet18"],
                     choices=["digits", "resnet18"], help="models the runtimes are compared on")
    sub.add_argument("--precisions", nargs="*", metavar="MODEL",
                     choices=["resnet18", "sentiment", "digits"],
                     help="instead: compare precisions (fp32, bf16, int8 static and dynamic) "
                     "through TorchServe on these models (all when none are named)")


def _cmd_bench(args) -> int:
    from scripts.bench import PARTS, run_bench, run_runtimes_bench

    if args.precisions is not None:
        from scripts.bench.precisions import run_precisions_bench

        run_precisions_bench(models=tuple(args.precisions or ("resnet18", "sentiment", "digits")),
                             seconds=args.throughput_seconds, concurrency=min(args.concurrency),
                             repeats=args.repeats, out=args.out.with_name("precisions.json"))
        return 0
    if args.runtimes is not None:
        run_runtimes_bench(models=tuple(args.runtime_models),
                           runtimes=tuple(args.runtimes or RUNTIMES),
                           seconds=args.throughput_seconds, concurrency=max(args.concurrency),
                           repeats=args.repeats, out=args.out.with_name("runtimes.json"))
        return 0
    run_bench(size_mb=args.size_mb, repeats=args.repeats, out=args.out,
              throughput_s=args.throughput_seconds, concurrency=args.concurrency,
              parts=tuple(args.parts) if args.parts else PARTS)
    return 0
