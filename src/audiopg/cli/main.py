"""The ``audiopg`` command line: one subcommand per job.

Each subcommand lives in its own module, which exposes ``register(subparsers)``
(adding its parser, with ``func`` set to the function that runs it).  Errors of
bad input (:class:`audiopg.core.config.ConfigError`, :class:`audiopg.core.errors.AudioPGError`)
are printed as one clear line and exit with status 2, without a traceback; so are
operating-system errors (a path that cannot be written or read, a full disk), naming
the path and the reason, with status 1.
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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, or argparse's own one-line usage error (status 2)
        return stop.code if isinstance(stop.code, int) else 1
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; bad input becomes one line on stderr and exit status 2."""
    try:
        return int(args.func(args) or 0)
    except (ConfigError, AudioPGError) as err:
        print(f"audiopg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"audiopg {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"audiopg {args.command}: interrupted", file=sys.stderr)
        return 130


def describe_os_error(err: OSError) -> str:
    """``PATH: reason`` of an operating-system error (the reason alone when it names no path)."""
    reason = err.strerror or str(err)
    return f"{err.filename}: {reason}" if err.filename else reason
