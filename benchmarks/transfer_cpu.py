"""Transfer benchmark on a CPU: linear probes of a checkpoint vs random init vs handcrafted features.

    python benchmarks/transfer_cpu.py --checkpoint RUN_DIR [--out DIR] [--data DATA_DIR]
    python benchmarks/transfer_cpu.py --handcrafted-only            # the baseline alone, no checkpoint

Tasks (from the shared evaluation data, ``$AUDIOPG_DATA`` or ``../shared/data`` beside the checkout):

* ``fsdd-own``   -- FSDD, its own split (takes 0-4 test, 300 clips), accuracy;
* ``fsdd-loso``  -- FSDD, leave-one-speaker-out (6 folds), mean accuracy;
* ``esc50-part`` -- the ESC-50 part (fold 4 + 14 clips): the official folds cannot run, so 5-fold
  cross-validation stratified by class and grouped by ``src_file`` (seeded), mean accuracy.

Models: ``pretrained`` (the checkpoint), ``random`` (same architecture, random init), ``handcrafted``
(80-bin log-mel mean and std, 160-d).  Each task is an ordinary ``audiopg probe`` run (embeddings are
cached, so FSDD is embedded once for both protocols); its results.json / results.md / confusion PNGs go
to ``OUT/<task>/``.  The script prints one table and writes ``OUT/transfer_cpu.json``, with the
handcrafted reference figures measured by the project next to ours.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from audiopg.cli.common import layer_arg
from audiopg.core.device import set_torch_threads
from audiopg.eval.datasets import default_data_root, load_dataset
from audiopg.eval.probe import run_probe
from audiopg.eval.report import format_score
from audiopg.model.encoder import POOLS

#: handcrafted-baseline accuracies measured by the project on the shared data (reference, not targets)
REFERENCE_HANDCRAFTED = {"fsdd-own": 0.953, "fsdd-loso": 0.56, "esc50-part": 0.31}

TASKS = (
    ("fsdd-own", "fsdd", "fsdd", "own"),
    ("fsdd-loso", "fsdd", "fsdd", "loso"),
    ("esc50-part", "esc50", "esc50-fold4", None),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="run folder or encoder.safetensors")
    p.add_argument("--handcrafted-only", action="store_true", help="run only the handcrafted baseline")
    p.add_argument("--data", type=Path, default=default_data_root(), help="shared data folder (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("transfer_cpu_results"), help="output folder")
    p.add_argument("--tasks", default=",".join(t[0] for t in TASKS), help="comma-separated subset of the tasks")
    p.add_argument("--layer", type=layer_arg, default=-1, help="encoder layer: -1 (final output), i or concat")
    p.add_argument("--pool", choices=POOLS, default="mean", help="pooling of the encoder's tokens")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="embedding cache folder (default: audiopg's; 'none' disables)")
    p.add_argument("--threads", default="auto", help="torch CPU threads, or auto (1 on a busy machine)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.checkpoint is None and not args.handcrafted_only:
        p.error("--checkpoint is required (or --handcrafted-only)")
    wanted = [t for t in TASKS if t[0] in args.tasks.split(",")]
    if not wanted:
        p.error(f"no known task in --tasks (known: {', '.join(t[0] for t in TASKS)})")
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    threads = set_torch_threads(args.threads if args.threads == "auto" else int(args.threads), log)
    summary: dict = {"checkpoint": None if args.checkpoint is None else str(args.checkpoint), "data": str(args.data),
                     "torch_threads": threads,
                     "tasks": {}, "reference_handcrafted": REFERENCE_HANDCRAFTED}
    t_all = time.time()
    for name, task, sub, protocol in wanted:
        root = args.data / sub
        if not root.exists():
            log(f"{name}: {root} not found, skipped")
            summary["tasks"][name] = {"skipped": f"{root} not found"}
            continue
        t0 = time.time()
        ds = load_dataset(task, root, protocol=protocol, seed=args.seed)
        log(f"== {name}: {len(ds.items)} clips; {ds.protocol.description}")
        res = run_probe(
            ds, args.out / name, checkpoint=args.checkpoint,
            baselines=["handcrafted"] if args.handcrafted_only else ["random", "handcrafted"],
            pretrained=not args.handcrafted_only, layer=args.layer, pool=args.pool, device=args.device,
            batch_size=args.batch_size, seed=args.seed, progress=not args.quiet, log=log,
            cache_dir=False if str(args.cache_dir).lower() in ("none", "off") else args.cache_dir,
        )
        summary["tasks"][name] = {
            "protocol": res["dataset"]["protocol"],
            "notes": res["dataset"]["notes"],
            "num_items": res["dataset"]["num_items"],
            "seconds": round(time.time() - t0, 1),
            "models": {m: {"mean": r["mean"], "std": r["std"], "folds": [f["score"] for f in r["folds"]]}
                       for m, r in res["models"].items()},
        }
    summary["seconds"] = round(time.time() - t_all, 1)
    models = sorted({m for t in summary["tasks"].values() for m in t.get("models", {})},
                    key=lambda m: ("pretrained", "random", "handcrafted").index(m))
    names = [n for n in summary["tasks"] if "models" in summary["tasks"][n]]
    header = f"{'model':<14}" + "".join(f"{n:>18}" for n in names)
    lines = ["accuracy (%), mean ± std over folds", header, "-" * len(header)]
    for m in models:
        row = f"{m:<14}"
        for n in names:
            r = summary["tasks"][n]["models"].get(m)
            cell = "" if r is None else f"{format_score('accuracy', r['mean'])} ± {format_score('accuracy', r['std'])}"
            row += f"{cell:>18}"
        lines.append(row)
    ref = f"{'reference hc':<14}" + "".join(f"{'~' + format_score('accuracy', REFERENCE_HANDCRAFTED[n]):>18}"
                                             for n in names)
    lines.append(ref)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transfer_cpu.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out / 'transfer_cpu.json'} ({summary['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
