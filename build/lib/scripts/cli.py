"""The `mar` command: build archives and drive TorchServe through its management API.

Every subcommand exits 0 on success and 1 with a one-paragraph reason on a user's error (a
MarError); anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from handlers.errors import MarError, UsageError
from handlers.runtimes import RUNTIMES
from handlers.spec import check_worker_range
from scripts.config import DEFAULT_CONFIG, read_config

__all__ = ["main", "build_parser"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except MarError as err:
        print(f"mar {args.command}: error: {err}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mar", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_build, _add_verify, _add_convert, _add_serve, _add_register, _add_scale,
                _add_set_default, _add_promote, _add_unregister, _add_models, _add_predict,
                _add_export_kserve, _add_bench):
        add(commands)
    return parser


def _command(commands, name: str, func, help_text: str, *, server: bool = True):
    """A subcommand running `func`; `server` commands take --config."""
    sub = commands.add_parser(name, help=help_text, description=help_text,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub.set_defaults(func=func)
    if server:
        sub.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                         help="TorchServe config.properties naming the server")
    return sub


def _client(args):
    from scripts.client import TorchServeClient

    return TorchServeClient(read_config(args.config))


# ---- build, verify, convert ----

def _add_build(commands) -> None:
    sub = _command(commands, "build", _cmd_build, "validate specs and weights, then write archives")
    sub.add_argument("specs", nargs="+", type=Path, metavar="SPEC.yaml")
    sub.add_argument("--weights", type=Path,
                     help="weights file instead of the spec's `weights` (only with one spec)")
    sub.add_argument("--export-path", type=Path, help="folder the archives are written to "
                     "(default: the model store named in --config)")
    sub.add_argument("--format", choices=["mar", "folder"], default="mar", dest="archive_format",
                     help="mar: one zip file; folder: TorchServe's no-archive layout, which it "
                     "links instead of extracting (fastest start from a shared model store)")


def _cmd_build(args) -> int:
    from scripts.build import build_archive

    if args.weights and len(args.specs) > 1:
        raise UsageError(f"--weights applies to one spec, but {len(args.specs)} were given. "
                       "Build them one at a time, or put each weights path in its spec.")
    export_path = args.export_path or read_config(args.config).model_store
    for spec in args.specs:
        _print_build(build_archive(spec, weights=args.weights, export_path=export_path,
                                   archive_format=args.archive_format))
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
    inputs, outputs = max(result.golden.cases, key=lambda case: sum(
        t.numel() for t in case[0].values()))
    describe = lambda tensors: ", ".join(f"{n} {list(t.shape)}" for n, t in tensors.items())
    print(f"  golden check recorded: {len(result.golden.cases)} case(s); the largest "
          f"{describe(inputs)} -> {describe(outputs)}")


def _add_verify(commands) -> None:
    sub = _command(commands, "verify", _cmd_verify, "re-run an archive's build-record and golden "
                   "checks from the archive alone, in a fresh process", server=False)
    sub.add_argument("archive", type=Path, metavar="ARCHIVE")


def _cmd_verify(args) -> int:
    from scripts.verify import verify_archive

    result = verify_archive(args.archive)
    print(result.report, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _add_convert(commands) -> None:
    sub = _command(commands, "convert-legacy", _cmd_convert, "unpickle a TRUSTED "
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


# ---- the server ----

def _add_serve(commands) -> None:
    sub = _command(commands, "serve", _cmd_serve, "start, stop or query TorchServe")
    sub.add_argument("action", choices=["start", "stop", "status"])
    sub.add_argument("--no-restore", action="store_true",
                     help="start empty instead of restoring the models registered at the last stop")


def _cmd_serve(args) -> int:
    from scripts.server import start_server, stop_server

    config = read_config(args.config)
    if args.action == "start":
        for line in start_server(config, restore=not args.no_restore):
            print(f"restored {line}")
        print(f"TorchServe is healthy: inference {config.inference_url}, management "
              f"{config.management_url}, model store {config.model_store}")
    elif args.action == "stop":
        stop_server(config)
        print(f"TorchServe for {config.path} stopped")
    else:
        status = _client(args).ping_status()
        print(f"TorchServe at {config.inference_url}: {status or 'not running'}")
        return 0 if status == "Healthy" else 1
    return 0


# ---- models on the server ----

def _add_register(commands) -> None:
    sub = _command(commands, "register", _cmd_register,
                   "register an archive from the model store through the management API")
    sub.add_argument("archive", type=Path, metavar="ARCHIVE")
    sub.add_argument("--workers", type=int, help="initial workers (default: --min-workers)")
    group = sub.add_argument_group("serving settings (default: the archive's spec)")
    group.add_argument("--min-workers", type=int)
    group.add_argument("--max-workers", type=int)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--max-batch-delay", type=int, metavar="MS")
    group.add_argument("--response-timeout", type=int, metavar="S",
                       help="must match the archive: TorchServe ignores it at registration")
    sub.add_argument("--set-default", action="store_true",
                     help="make this version the one /predictions/NAME answers with")


def _cmd_register(args) -> int:
    from scripts.manage import register_archive

    overrides = {"min_workers": args.min_workers, "max_workers": args.max_workers,
                 "batch_size": args.batch_size, "max_batch_delay_ms": args.max_batch_delay,
                 "response_timeout_s": args.response_timeout}
    archive = register_archive(read_config(args.config), args.archive, workers=args.workers,
                               serving=overrides, set_default=args.set_default)
    print(f"registered {archive.name} {archive.version}"
          + (" as the default version" if args.set_default else ""))
    return 0


def _add_scale(commands) -> None:
    sub = _command(commands, "scale", _cmd_scale, "set a model version's minimum and maximum workers")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--version", help="default: the default version")
    sub.add_argument("--min", type=int, required=True, dest="min_workers")
    sub.add_argument("--max", type=int, required=True, dest="max_workers")


def _cmd_scale(args) -> int:
    problems: list[str] = []
    check_worker_range(args.min_workers, args.max_workers, problems, names=("--min", "--max"))
    if problems:
        raise UsageError(problems[0] + ".")
    _client(args).scale(args.name, args.version, min_workers=args.min_workers,
                        max_workers=args.max_workers)
    print(f"{args.name} {args.version or '(default version)'}: min {args.min_workers}, "
          f"max {args.max_workers} workers")
    return 0


def _add_set_default(commands) -> None:
    sub = _command(commands, "set-default", _cmd_set_default,
                   "make VERSION the version /predictions/NAME answers with")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("version", metavar="VERSION")


def _cmd_set_default(args) -> int:
    _client(args).set_default(args.name, args.version)
    print(f"{args.name}: default version is now {args.version}")
    return 0


def _add_promote(commands) -> None:
    sub = _command(commands, "promote", _cmd_promote, "serve ARCHIVE as its model's new default "
                   "version with no downtime, then retire the old version")
    sub.add_argument("archive", type=Path, metavar="ARCHIVE")
    sub.add_argument("--drain-seconds", type=float, default=2.0,
                     help="wait after the switch before the old version is unregistered")


def _cmd_promote(args) -> int:
    from scripts.manage import promote

    old, new = promote(read_config(args.config), args.archive, drain_s=args.drain_seconds)
    print(f"promoted: {new} is the default version; {old} was retired")
    return 0


def _add_unregister(commands) -> None:
    sub = _command(commands, "unregister", _cmd_unregister, "unregister a model version")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("version", nargs="?", metavar="VERSION", help="default: the default version")


def _cmd_unregister(args) -> int:
    _client(args).unregister(args.name, args.version)
    print(f"unregistered {args.name} {args.version or '(default version)'}")
    return 0


def _add_models(commands) -> None:
    sub = _command(commands, "models", _cmd_models, "list registered models and their workers")
    sub.add_argument("name", nargs="?", metavar="NAME", help="only this model")
    sub.add_argument("--json", action="store_true", help="print TorchServe's descriptions")


def _cmd_models(args) -> int:
    client = _client(args)
    names = [args.name] if args.name else [m["modelName"] for m in client.list_models()]
    defaults = {name: client.default_version(name) for name in names}
    described = [version for name in names for version in client.describe(name)]
    for model in described:
        model["isDefault"] = defaults[model["modelName"]] == model["modelVersion"]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    rows = [("NAME", "VERSION", "DEFAULT", "WORKERS", "MIN-MAX", "BATCH", "DELAY_MS", "TIMEOUT_S")]
    for model in described:
        workers = model.get("workers", [])
        ready = sum(1 for w in workers if w.get("status") == "READY")
        rows.append((model["modelName"], model["modelVersion"], "yes" if model["isDefault"] else "",
                     f"{ready}/{len(workers)} ready",
                     f"{model.get('minWorkers')}-{model.get('maxWorkers')}",
                     str(model.get("batchSize")), str(model.get("maxBatchDelay")),
                     str(model.get("responseTimeout"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _add_predict(commands) -> None:
    sub = _command(commands, "predict", _cmd_predict, "send a JSON request to a model")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--version", help="default: the default version")
    sub.add_argument("--input", type=Path, required=True, metavar="FILE.json",
                     help='request body, e.g. {"inputs": [...]}')


def _cmd_predict(args) -> int:
    try:
        body = args.input.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no input file {args.input}. Write the request body there, "
                       'e.g. {"inputs": [[...]]}.') from None
    print(_client(args).predict(args.name, body, version=args.version).body.decode())
    return 0


# ---- elsewhere: KServe, the benchmark ----

def _add_export_kserve(commands) -> None:
    sub = _command(commands, "export-kserve", _cmd_export_kserve, "write the layout KServe's "
                   "PyTorch runtime serves: config, model store, InferenceService", server=False)
    sub.add_argument("sources", nargs="+", type=Path, metavar="SPEC_OR_ARCHIVE")
    sub.add_argument("--out", type=Path, required=True, help="a new, empty folder")
    sub.add_argument("--name", help="InferenceService name (default: the first model's)")
    sub.add_argument("--min-replicas", type=int, default=1)
    sub.add_argument("--max-replicas", type=int, default=3)
    sub.add_argument("--concurrency-target", type=int, help="in-flight requests per replica "
                     "before Knative adds one (default: the largest batch size)")


def _cmd_export_kserve(args) -> int:
    from scripts.kserve import STORAGE_URI_PLACEHOLDER, export_kserve

    result = export_kserve(args.sources, args.out, service_name=args.name,
                           min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                           concurrency_target=args.concurrency_target)
    print(f"wrote {result.out}: config/config.properties, {len(result.archives)} archive(s) in "
          f"model-store/, inferenceservice.yaml ({result.service_name}). Upload the folder and "
          f"replace storageUri {STORAGE_URI_PLACEHOLDER} with its address.")
    return 0


def _add_bench(commands) -> None:
    sub = _command(commands, "bench", _cmd_bench, "measure build, cold start, memory and "
                   "throughput against stock TorchServe on this machine (prints ratios)",
                   server=False)
    sub.add_argument("--size-mb", type=int, default=1024, help="size of the benchmark weights")
    sub.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    sub.add_argument("--throughput-seconds", type=float, default=20,
                     help="ab run length per concurrency; 0 skips the throughput part")
    sub.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    sub.add_argument("--parts", nargs="+", metavar="PART",
                     help="the parts to run (default: all): build, cold-start, throughput, "
                     "protocols, images, hostile")
    sub.add_argument("--out", type=Path, default=Path("bench_results/bench.json"))
    sub.add_argument("--runtimes", nargs="*", metavar="RUNTIME", choices=RUNTIMES,
                     help="instead: compare serving runtimes (all when none are named) on "
                     "--runtime-models, at the models' spec batching")
    sub.add_argument("--runtime-models", nargs="+", default=["digits", "resnet18"],
                     choices=["digits", "resnet18"], help="models the runtimes are compared on")


def _cmd_bench(args) -> int:
    from scripts.bench import PARTS, run_bench, run_runtimes_bench

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


if __name__ == "__main__":
    sys.exit(main())
