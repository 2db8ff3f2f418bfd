"""What several commands parse or print the same way."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from audiopg.model.encoder import parse_layer


def stderr_log(quiet: bool = False) -> Callable[[str], None]:
    """A progress logger to stderr (silent with ``quiet``)."""
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return log


def threads_arg(text: str) -> str | int:
    """``--threads``: "auto" or a positive integer."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--threads must be 'auto' or a positive integer, got {text!r}")
    return n


def layer_arg(text: str) -> int | str:
    """``--layer``: a block index, -1 (the final output) or "concat"."""
    try:
        return parse_layer(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--{err}") from None
