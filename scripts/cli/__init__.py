"""The `mar` command: build archives and drive TorchServe through its management API.

Every subcommand exits 0 on success and 1 with a one-paragraph reason on a user's error (a
MarError); anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys

from handlers.errors import MarError
from scripts.cli import build_host, repository, serving

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
    for add in (build_host.add_build, build_host.add_verify, build_host.add_convert,
                serving.add_serve, serving.add_register, serving.add_scale, serving.add_set_default,
                serving.add_promote, serving.add_unregister, serving.add_models,
                serving.add_predict, repository.add_publish, repository.add_pull,
                build_host.add_export_kserve, build_host.add_bench):
        add(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
