"""The ``audiopg`` command line: one subcommand per job.

Each subcommand lives in its own module, which exposes ``register(subparsers)``
(adding its parser, with ``func`` set to the function that runs it).  Errors of
bad input (:class:`audiopg.core.config.ConfigError`, :class:`audiopg.core.errors.AudioPGError`)
are printed as one clear line and exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from audiopg import __version__
from audiopg.core.errors import AudioPGError, ConfigError

# module -> registers one or more subcommands
COMMAND_MODULES = [
    "audiopg.cli.synth",
    "audiopg.cli.embed",
    "audiopg.cli.analyze",
    "audiopg.cli.pretrain",
    "audiopg.cli.ablate",
    "audiopg.cli.eval",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiopg",
        description="Pre-train audio encoders on a procedural sound world, then evaluate and inspect them.",
    )
    parser.add_argument("--version", action="version", version=f"audiopg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; bad input becomes one line on stderr and exit status 2."""
    try:
        return int(args.func(args) or 0)
    except (ConfigError, AudioPGError) as err:
        print(f"audiopg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"audiopg {args.command}: interrupted", file=sys.stderr)
        return 130
