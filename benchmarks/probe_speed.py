"""Linear-probe speed: the splits of a protocol fitted one at a time against several at once, in one process.

The probe (``audiopg.eval.probe.probe_features``) fits every outer split with its own inner cross-validation over
the C grid.  The splits are independent, so it fits ``jobs`` of them at once in threads, one BLAS thread each.
This times a leave-one-group-out probe shaped like FSDD's (3,000 clips, 10 classes, 6 speakers) on features as
wide as the default `tiny` embedding (every block's meanstd vector: 2,304 values), with ``jobs=1`` and with
``--jobs``, in alternating rounds so that drifts of a shared machine hit both alike, checks that both give the
same scores, and prints the median ratio last.  The features are synthetic (class and speaker directions plus
noise, seeded), so no data is needed.

    python benchmarks/probe_speed.py                 # jobs 2 against 1, 2 rounds
    python benchmarks/probe_speed.py --jobs 4 --rounds 3 --dim 768
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from audiopg.eval.datasets.base import SINGLE, Dataset, GroupCV, Item
from audiopg.eval.probe import probe_features


def leave_one_group_out(n: int, classes: int, groups: int) -> Dataset:
    """A dataset of ``n`` items whose protocol holds each of ``groups`` groups out once (no files are read)."""
    items = [Item(Path(f"/synthetic/{i}.wav"), i % classes, group=f"speaker{(i // classes) % groups}")
             for i in range(n)]
    return Dataset("synthetic", Path("/synthetic"), SINGLE, [str(k) for k in range(classes)], items,
                   GroupCV(groups, 0, stratified=False, grouped=True))


def features(ds: Dataset, dim: int, seed: int) -> np.ndarray:
    """Class directions, speaker directions (the nuisance) and noise: a probe that is neither trivial nor hopeless."""
    rng = np.random.default_rng(seed)
    y = ds.targets()
    groups = np.array([int(it.group.removeprefix("speaker")) for it in ds.items])
    return (0.04 * rng.standard_normal((len(ds.classes), dim))[y]
            + 1.0 * rng.standard_normal((groups.max() + 1, dim))[groups]
            + rng.standard_normal((len(y), dim))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3000, help="items (default 3000, as FSDD)")
    p.add_argument("--dim", type=int, default=2304, help="feature width (default 2304: tiny's default embedding)")
    p.add_argument("--jobs", type=int, default=2, help="splits fitted at once in the parallel runs (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both (default 2)")
    args = p.parse_args(argv)

    ds = leave_one_group_out(args.n, 10, 6)
    x = features(ds, args.dim, seed=0)
    times: dict[int, list[float]] = {1: [], args.jobs: []}
    scores: dict[int, list[float]] = {}
    for r in range(args.rounds):
        for jobs in ((1, args.jobs) if r % 2 == 0 else (args.jobs, 1)):
            t0 = time.perf_counter()
            res = probe_features(ds, x, name="synthetic", description="", jobs=jobs)
            times[jobs].append(time.perf_counter() - t0)
            scores[jobs] = [f.score for f in res.folds]
            print(f"round {r + 1}, jobs {jobs}: {times[jobs][-1]:.1f} s, accuracy {res.mean:.3f}", flush=True)
    if scores[1] != scores[args.jobs]:
        raise SystemExit(f"the scores differ: {scores[1]} against {scores[args.jobs]}")
    ratios = [a / b for a, b in zip(times[1], times[args.jobs])]
    print(f"probe of {args.n} x {args.dim} features, 6 leave-one-group-out splits: jobs 1 "
          f"{statistics.median(times[1]):.1f} s, jobs {args.jobs} {statistics.median(times[args.jobs]):.1f} s")
    print(f"speed-up jobs {args.jobs} / jobs 1: {statistics.median(ratios):.2f}x (same scores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
