"""The fault harness: run a command (or an API call) that is given bad input, classify what the user saw.

Every case ends in exactly one outcome:

- ``clear``: a non-zero exit (or an AudioPG/Config error from the API) whose message names the culprit
  (the file, key or option that is wrong), no traceback, and nothing already written changed;
- ``warned``: the command went on (exit 0) but said, naming the culprit, what it did about it;
- ``traceback``: a raw traceback (or an unrelated exception type from the API);
- ``unclear``: it failed without naming the culprit;
- ``silent``: exit 0 (or no exception) and no word about the fault;
- ``data lost``: a file that existed before the command changed or vanished;
- ``recovered``: an interrupted job (a kill) was started again or resumed and ended as if never stopped (the
  test asserts that itself, then calls ``faults.recovered()``).

A case asserts its expected outcome.  With ``AUDIOPG_FAULT_CENSUS=FILE`` set, every case also appends one JSON
line (case, outcome) to FILE; ``benchmarks/fault_census.py`` runs this folder that way and counts the outcomes.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pytest

from audiopg.core.errors import AudioPGError, ConfigError

CENSUS = os.environ.get("AUDIOPG_FAULT_CENSUS")
SRC = str(Path(__file__).resolve().parents[2] / "src")


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


def snapshot(paths: Iterable[str | os.PathLike]) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file under ``paths`` (files or folders)."""
    out: dict[str, tuple[str, int]] = {}
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        for f in files:
            out[str(f)] = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mode & 0o777)
    return out


def run_cli(args: list[str], *, subprocess_: bool = False, timeout: float = 600, env: dict | None = None) -> Result:
    """``audiopg ARGS``: in this process (fast; an escaping exception counts as a traceback, rc 1), or in a fresh
    one with ``subprocess_``."""
    if subprocess_:
        code = "import sys; from audiopg.cli.main import main; sys.exit(main(sys.argv[1:]))"
        full_env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
        p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                           timeout=timeout, env=full_env)
        return Result(p.returncode, p.stdout, p.stderr)
    from audiopg.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - what the user would see as a traceback
            traceback.print_exc(file=err)
            rc = 1
    return Result(int(rc or 0), out.getvalue(), err.getvalue())


def classify(res: Result, culprit: str | Iterable[str], before: dict, after: dict, *, expect: str) -> str:
    culprits = [culprit] if isinstance(culprit, str) else list(culprit)
    named = any(c.lower() in res.stderr.lower() for c in culprits)
    if any(before.get(k) != after.get(k) for k in before):
        return "data lost"
    if "Traceback (most recent call last)" in res.stderr:
        return "traceback"
    if res.rc == 0:
        return "warned" if expect == "warned" and named else "silent"
    return "clear" if named else "unclear"


def _record(node: str, outcome: str, detail: str) -> None:
    if CENSUS:
        with open(CENSUS, "a") as f:
            f.write(json.dumps({"case": node, "outcome": outcome, "detail": detail[-300:]}) + "\n")


class Faults:
    """``faults.cli(args, culprit, guard=[...])``: the command must fail clearly; ``expect="warned"``: it must go
    on and say so.  ``faults.api(fn, culprit)``: the call must raise an AudioPG or Config error naming the culprit.
    ``guard``: files or folders that must not change."""

    def __init__(self, node: str):
        self.node = node
        self.n = 0

    def _case(self) -> str:
        self.n += 1
        return f"{self.node}#{self.n}"

    def cli(self, args: list, culprit: str | Iterable[str], *, guard: Iterable = (), expect: str = "clear",
            subprocess_: bool = False, env: dict | None = None, timeout: float = 600) -> Result:
        guard = list(guard)
        before = snapshot(guard)
        res = run_cli(args, subprocess_=subprocess_, env=env, timeout=timeout)
        outcome = classify(res, culprit, before, snapshot(guard), expect=expect)
        _record(self._case(), outcome, res.stderr)
        assert outcome == expect, (f"audiopg {' '.join(map(str, args))}: expected {expect}, got {outcome} "
                                   f"(rc {res.rc}); stderr:\n{res.stderr[-3000:]}")
        return res

    def recovered(self, detail: str = "") -> None:
        """Record a case whose checks the test made itself (a killed run that came back whole)."""
        _record(self._case(), "recovered", detail)

    def api(self, fn: Callable[[], object], culprit: str | Iterable[str], *, guard: Iterable = ()) -> Exception:
        culprits = [culprit] if isinstance(culprit, str) else list(culprit)
        guard = list(guard)
        before = snapshot(guard)
        err: BaseException | None = None
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            err = e
        after = snapshot(guard)
        if any(before.get(k) != after.get(k) for k in before):
            outcome = "data lost"
        elif err is None:
            outcome = "silent"
        elif not isinstance(err, (AudioPGError, ConfigError)):
            outcome = "traceback"
        else:
            outcome = "clear" if any(c.lower() in str(err).lower() for c in culprits) else "unclear"
        _record(self._case(), outcome, repr(err))
        assert outcome == "clear", f"expected a clear error naming {culprits}, got {outcome}: {err!r}"
        return err  # type: ignore[return-value]


@pytest.fixture
def faults(request) -> Faults:
    return Faults(request.node.nodeid)
