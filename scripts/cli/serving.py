"""`mar` commands that drive a running TorchServe (its --config): serve, register, scale,
set-default, promote, unregister, models, predict."""

from __future__ import annotations

import json
from pathlib import Path

from handlers.errors import UsageError
from handlers.spec import check_worker_range
from scripts.cli.common import command, server_client
from scripts.config import read_config

__all__ = ['add_serve', 'add_register', 'add_scale', 'add_set_default', 'add_promote', 'add_unregister', 'add_models', 'add_predict']


def add_serve(commands) -> None:
    sub = command(commands, "serve", _cmd_serve, "start, stop or query TorchServe")
    sub.add_argument("action", choices=["start", "stop", "status"])
    sub.add_argument("--no-restore", action="store_true",
                     help="start empty instead of restoring the models registered at the last stop")


def _cmd_serve(args) -> int:
    from scripts.server import start_server, stop_server

    config = read_config(args.config)
    if args.action == "start":
        restored = start_server(config, restore=not args.no_restore)
        for line in restored.loaded:
            print(f"restored {line}")
        for line in restored.refused:
            print(f"NOT restored {line}")
        print(f"TorchServe is healthy: inference {config.inference_url}, management "
              f"{config.management_url}, model store {config.model_store}")
    elif args.action == "stop":
        stop_server(config)
        print(f"TorchServe for {config.path} stopped")
    else:
        status = server_client(args).ping_status()
        print(f"TorchServe at {config.inference_url}: {status or 'not running'}")
        return 0 if status == "Healthy" else 1
    return 0


def add_register(commands) -> None:
    sub = command(commands, "register", _cmd_register,
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
    registered = register_archive(read_config(args.config), args.archive, workers=args.workers,
                                  serving=overrides, set_default=args.set_default)
    archive = registered.archive
    print(f"registered {archive.name} {archive.version}"
          + (" as the default version" if args.set_default else "") + f" ({registered.signature})")
    return 0


def add_scale(commands) -> None:
    sub = command(commands, "scale", _cmd_scale, "set a model version's minimum and maximum workers")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--version", help="default: the default version")
    sub.add_argument("--min", type=int, required=True, dest="min_workers")
    sub.add_argument("--max", type=int, required=True, dest="max_workers")


def _cmd_scale(args) -> int:
    problems: list[str] = []
    check_worker_range(args.min_workers, args.max_workers, problems, names=("--min", "--max"))
    if problems:
        raise UsageError(problems[0] + ".")
    server_client(args).scale(args.name, args.version, min_workers=args.min_workers,
                        max_workers=args.max_workers)
    print(f"{args.name} {args.version or '(default version)'}: min {args.min_workers}, "
          f"max {args.max_workers} workers")
    return 0


def add_set_default(commands) -> None:
    sub = command(commands, "set-default", _cmd_set_default,
                   "make VERSION the version /predictions/NAME answers with")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("version", metavar="VERSION")


def _cmd_set_default(args) -> int:
    server_client(args).set_default(args.name, args.version)
    print(f"{args.name}: default version is now {args.version}")
    return 0


def add_promote(commands) -> None:
    sub = command(commands, "promote", _cmd_promote, "serve ARCHIVE as its model's new default "
                   "version with no downtime, then retire the old version")
    sub.add_argument("archive", type=Path, metavar="ARCHIVE")
    sub.add_argument("--drain-seconds", type=float, default=2.0,
                     help="wait after the switch before the old version is unregistered")


def _cmd_promote(args) -> int:
    from scripts.manage import promote

    old, new = promote(read_config(args.config), args.archive, drain_s=args.drain_seconds)
    print(f"promoted: {new} is the default version; {old} was retired")
    return 0


def add_unregister(commands) -> None:
    sub = command(commands, "unregister", _cmd_unregister, "unregister a model version")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("version", nargs="?", metavar="VERSION", help="default: the default version")


def _cmd_unregister(args) -> int:
    server_client(args).unregister(args.name, args.version)
    print(f"unregistered {args.name} {args.version or '(default version)'}")
    return 0


def add_models(commands) -> None:
    sub = command(commands, "models", _cmd_models, "list registered models and their workers, "
                  "or with --repo the versions a model repository holds")
    sub.add_argument("name", nargs="?", metavar="NAME", help="only this model")
    sub.add_argument("--json", action="store_true", help="print the full descriptions as JSON")
    sub.add_argument("--repo", metavar="REPO", help="list this repository (a folder, "
                     "s3://BUCKET/PREFIX or https://...) instead of the server")


def _cmd_models(args) -> int:
    if args.repo:
        from scripts.cli.repository import print_repository

        return print_repository(args.repo, args.name, args.json)
    client = server_client(args)
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


def add_predict(commands) -> None:
    sub = command(commands, "predict", _cmd_predict, "send a JSON request to a model")
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
    print(server_client(args).predict(args.name, body, version=args.version).body.decode())
    return 0
