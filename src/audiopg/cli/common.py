"""What several commands parse or print the same way."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable

from audiopg.experiments.transfer import PROBE_TASKS
from audiopg.model.encoder import parse_layer


def stderr_log(quiet: bool = False) -> Callable[[str], None]:
    """A progress logger to stderr (silent with ``quiet``)."""
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return log


def overwrite_arg(p: argparse.ArgumentParser, *aliases: str, what: str = "output folder") -> None:
    """``--overwrite``: the one flag that lets a command replace an existing output (refused without it)."""
    p.add_argument("--overwrite", *aliases, dest="overwrite", action="store_true",
                   help=f"replace an existing {what} whole (without it an existing one is refused)")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = low - 1
    if n < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return n


def threads_arg(text: str) -> str | int:
    """``--threads``: "auto" or a positive integer."""
    if text == "auto":
        return text
    try:
        return _int_at_least(text, 1, "")
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--threads must be 'auto' or a positive integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """A count (``--batch-size``, ``--n``, ``--steps`` ...): an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def natural_int(text: str) -> int:
    """A seed: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A length or rate (``--max-seconds``, ``--minutes``, ``--timeout``, ``--lr`` ...): a finite number > 0."""
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return x


def layer_arg(text: str) -> int | str:
    """``--layer``: a block index, -1 (the final output) or "concat"."""
    try:
        return parse_layer(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--{err}") from None


def experiment_args(p: argparse.ArgumentParser) -> None:
    """The options every pre-train-and-probe study takes (``audiopg ablate``, benchmarks/transfer_curve.py)."""
    p.add_argument("--tasks", default=",".join(PROBE_TASKS), help=f"comma-separated subset of {','.join(PROBE_TASKS)}")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="pre-training setting of every run, as in `audiopg pretrain --set` (repeatable), "
                        "e.g. batch_size=32, model.depth=2")
    p.add_argument("--model-preset", default="tiny", help="model preset of every run (default tiny)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="shared evaluation data holding fsdd/ and esc50-fold4/ (default $AUDIOPG_DATA or "
                        "../shared/data beside the checkout)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ... (training and probing)")
    p.add_argument("--probe-batch-size", type=positive_int, default=32, help="encoder windows per forward pass when probing")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache of the probes (default audiopg's; 'none' disables)")
    p.add_argument("--threads", type=threads_arg, default="auto",
                   help="torch CPU threads, or auto (1 on a busy machine; default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
