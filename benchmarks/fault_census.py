"""Count the outcomes of the fault harness (tests/faults/).

Outcomes: clear errors, named warnings, killed runs that came back whole, tracebacks, unclear messages, silent
failures and data lost.

    python benchmarks/fault_census.py            # runs pytest on tests/faults, prints the table

Every case of the harness records its outcome (tests/faults/conftest.py); this script runs the folder with
AUDIOPG_FAULT_CENSUS set and tallies them.  A case whose outcome is not the one it expects also fails its test, so
the table and pytest's summary agree.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("clear", "warned", "recovered", "traceback", "unclear", "silent", "data lost")


def census(paths: list[str]) -> tuple[collections.Counter, collections.Counter, int]:
    """Outcomes overall and per test file, and pytest's exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "census.jsonl"
        env = {**os.environ, "AUDIOPG_FAULT_CENSUS": str(log)}
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths],
                            cwd=ROOT, env=env).returncode
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    total = collections.Counter(r["outcome"] for r in rows)
    per_file = collections.Counter((r["case"].split("::")[0], r["outcome"]) for r in rows)
    return total, per_file, rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=["tests/faults"], help="test files or folders (default tests/faults)")
    args = ap.parse_args()
    total, per_file, rc = census(args.paths)
    files = sorted({f for f, _ in per_file})
    print("\n| file | cases | " + " | ".join(OUTCOMES) + " |")
    print("|---|---:|" + "---:|" * len(OUTCOMES))
    for f in files + ["all"]:
        counts = total if f == "all" else {o: per_file[(f, o)] for o in OUTCOMES}
        name = "**all**" if f == "all" else f"`{f}`"
        print(f"| {name} | {sum(counts.get(o, 0) for o in OUTCOMES)} | "
              + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |")
    bad = sum(total[o] for o in ("traceback", "unclear", "silent", "data lost"))
    print(f"\npytest exit status {rc}; cases that are not clear errors, named warnings or recoveries: {bad}")
    return 0 if rc == 0 and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
