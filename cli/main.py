"""`far-mesh <command>`: dispatches to the subcommands each room registers.

Every room that owns commands has a `commands.py` with `register(subparsers)`; the handlers import their
heavy modules lazily, so `far-mesh --help`, `far-mesh migrate` and `far-mesh keys` work in the light image
that has no torch or petals installed.
"""

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from protocol.settings import SettingsError

COMMAND_MODULES = (
    "cli.settings_reference",
    "devstack.commands",
    "mesh.commands",
    "gateway.commands",
    "workers.commands",
    "accounting.commands",
    "accounting.deposit_commands",
    "payouts.commands",
    "chain.commands",
    "schema.commands",
    "portal.commands",
    "verifier.commands",
)
"""Rooms whose `register` adds subcommands; a room not yet present is skipped."""

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="far-mesh", description="Far Mesh coordinator: gateway, workers, ledger, swarm"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; configuration errors end with exit status 2 and the variable's name, no traceback."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except SettingsError as exc:
        print(f"far-mesh {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
