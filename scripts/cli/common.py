"""What every `mar` command shares: its subparser, and the client of the server its --config
names."""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts.config import DEFAULT_CONFIG, read_config

__all__ = ["command", "server_client"]


def command(commands, name: str, func, help_text: str, *, server: bool = True):
    """A subcommand running `func`; `server` commands take --config."""
    sub = commands.add_parser(name, help=help_text, description=help_text,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub.set_defaults(func=func)
    if server:
        sub.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                         help="TorchServe config.properties naming the server")
    return sub


def server_client(args):
    from scripts.client import TorchServeClient

    return TorchServeClient(read_config(args.config))
