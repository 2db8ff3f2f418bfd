"""``audiopg analyze``: what an encoder's embeddings know about the world's factors, and how it is laid out.

    audiopg analyze --checkpoint runs/tiny --out runs/tiny/analysis [--clips 512] [--seed 0]
                    [--device cpu] [--no-baseline] [--fsdd PATH | --no-real]

The run is :func:`audiopg.analysis.report.run_analysis`; the method is in docs/analysis.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from audiopg.analysis.report import AnalysisSettings, run_analysis
from audiopg.cli.common import natural_int, overwrite_arg
from audiopg.core.io import output_folder
from audiopg.eval.datasets import DATA_ENV


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="decodability, orthogonality and MI of the world's factors in an encoder's layers, vs random init",
        description="Probe an encoder with clips of the procedural world whose factors are known: per-layer "
                    "decodability, angles between factor directions (with chance levels), mutual information, "
                    "figures, the same for a randomly initialized copy, and a real-audio f0 check (FSDD).",
    )
    d = AnalysisSettings  # the defaults
    p.add_argument("--checkpoint", required=True, type=Path, help="run folder, model folder or encoder.safetensors")
    p.add_argument("--out", required=True, type=Path, help="output folder (report.md, analysis.json, PNGs)")
    overwrite_arg(p)
    p.add_argument("--clips", type=int, default=d.clips, help="clips in the random probe set (default %(default)s)")
    p.add_argument("--bases", type=int, default=d.bases,
                   help="base clips per sweep (default %(default)s; the f0 sweep rounds up to a multiple of the "
                        "tonal sources)")
    p.add_argument("--points", type=int, default=d.points, help="values per sweep (default %(default)s)")
    p.add_argument("--f0-points", type=int, default=d.f0_points, help="values of the f0 sweep (default %(default)s)")
    p.add_argument("--seed", type=natural_int, default=d.seed,
                   help="random seed of probe sets, splits, baseline init (default %(default)s)")
    p.add_argument("--device", default=d.device, help="torch device: cpu, cuda, auto (default %(default)s)")
    p.add_argument("--no-baseline", action="store_true", help="skip the randomly initialized baseline")
    p.add_argument("--layer", type=int, default=d.layer,
                   help="layer for angle figures, MI and PCA (default %(default)s: the last)")
    p.add_argument("--folds", type=int, default=d.folds, help="outer cross-validation folds (default %(default)s)")
    p.add_argument("--permutations", type=int, default=d.permutations,
                   help="shuffled-target probes per factor (default %(default)s)")
    p.add_argument("--rank", type=int, default=d.rank, help="rank k of the probe subspaces (default %(default)s)")
    p.add_argument("--mi-units", type=int, default=d.mi_units,
                   help="units in the MI heatmap, a random subset beyond (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="windows per forward pass (default %(default)s)")
    p.add_argument("--fsdd", type=Path,
                   help=f"FSDD folder (default: ${DATA_ENV}/fsdd, else shared/data/fsdd beside the checkout)")
    p.add_argument("--real-clips", type=int, default=d.real_clips,
                   help="real voiced segments to use at most (default %(default)s)")
    p.add_argument("--no-real", action="store_true", help="skip the real-audio check")
    p.add_argument("--html", action="store_true",
                   help="also write index.html: the report with its figures, and a few probe clips to hear and see")
    p.set_defaults(func=run_analyze)


def _log(msg: str) -> None:
    print(f"[analyze {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_analyze(args: argparse.Namespace) -> int:
    settings = AnalysisSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnalysisSettings)})
    with output_folder(args.out, overwrite=args.overwrite, kind="an analysis", marker="analysis.json") as tmp:
        run_analysis(dataclasses.replace(settings, out=tmp), log=lambda msg: _log(msg.replace(str(tmp), str(args.out))))
    return 0
