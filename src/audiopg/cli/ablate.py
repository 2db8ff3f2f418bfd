"""``audiopg ablate``: which parts of the world matter? Pre-train per world variant and seed, probe, tabulate.

Examples::

    audiopg ablate --preset rich --without voice,modal,string,textures,scene,room --minutes 8 --seeds 2 --out runs/abl
    audiopg ablate --variants paper,rich,rich-no-room --minutes 4 --seeds 3 --out runs/abl2 --tasks fsdd-loso
    audiopg ablate ... --out runs/abl        # again: finished runs and probes are reused, unfinished runs resumed
"""
from __future__ import annotations

import argparse
from pathlib import Path

from audiopg.cli.common import experiment_args, positive_float, positive_int, stderr_log
from audiopg.core.device import set_torch_threads
from audiopg.core.errors import ConfigError
from audiopg.experiments.ablate import (
    FAMILY_OVERRIDES,
    default_variants,
    format_table,
    parse_families,
    parse_variant,
    run_ablation,
)
from audiopg.experiments.transfer import RunInterrupted

DESCRIPTION = """\
Pre-train one model per world variant and seed with the same budget, probe every
encoder like benchmarks/transfer_cpu.py (FSDD own split, FSDD leave-one-speaker-out,
the ESC-50 part; plus the handcrafted baseline once), and write OUT/ablation.json,
ablation.md (variant x task, mean ± std over seeds) and ablation.png.

Variants: paper, the --preset world, and the --preset world without each family of
--without (named PRESET-no-FAMILY); or an explicit --variants list of PRESET or
PRESET-no-FAMILY[+FAMILY...].  Families: voice, modal, string, textures (granular,
modulated_noise, glide), scene (one source per clip), room (room and distance).

Runs go to OUT/<variant>/seed<k>/ (ordinary `audiopg pretrain` run folders); a
finished run is reused, an unfinished one resumed, so rerunning the same command
continues an interrupted ablation.  Tasks whose data folder is absent are skipped.
"""


def register(subparsers) -> None:

    p = subparsers.add_parser(
        "ablate",
        help="world ablation: pre-train per world variant and seed, probe, tabulate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="rich", help="world preset the families are removed from (default rich)")
    p.add_argument("--without", default=None, metavar="FAMILIES",
                   help=f"comma-separated families to remove one at a time (default: all: {','.join(FAMILY_OVERRIDES)})")
    p.add_argument("--variants", default=None, metavar="NAMES",
                   help="explicit comma-separated variants instead, e.g. paper,rich,rich-no-voice,rich-no-scene+room")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--minutes", type=positive_float, help="wall-clock budget of every pre-training run, minutes")
    length.add_argument("--steps", type=positive_int, help="optimizer steps of every pre-training run")
    p.add_argument("--seeds", type=positive_int, default=2, help="seeds 0..N-1 per variant (default 2)")
    p.add_argument("--out", required=True, type=Path, help="ablation folder (created, or continued)")
    p.add_argument("--html", action="store_true", help="also write index.html: the table and figure as one page")
    experiment_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    log = stderr_log()
    if args.variants is not None:
        if args.without is not None:
            raise ConfigError("variants", "give --variants or --without, not both")
        variants = [parse_variant(n, args.preset) for n in args.variants.split(",") if n.strip()]
    else:
        without = parse_families(args.without) if args.without is not None else tuple(FAMILY_OVERRIDES)
        variants = default_variants(args.preset, without)
    set_torch_threads(args.threads, log)
    cache_dir = args.cache_dir
    if cache_dir is not None:
        cache_dir = False if cache_dir.lower() in ("none", "off") else Path(cache_dir)
    try:
        summary = run_ablation(
            args.out, variants=variants, seeds=args.seeds, minutes=args.minutes, steps=args.steps,
            data_root=args.data_root, tasks=args.tasks, model_preset=args.model_preset, overrides=args.set,
            device=args.device, probe_batch_size=args.probe_batch_size, cache_dir=cache_dir,
            progress=not args.no_progress, log=log, html=args.html,
        )
    except RunInterrupted as err:
        log(f"audiopg ablate: {err}")
        return 128 + int(err.signal) if err.signal is not None else 130
    print("\n".join(format_table(summary)))
    for t, info in summary["tasks"].items():
        if info.get("skipped"):
            print(f"note: {t} skipped ({info['skipped']})")
    out = Path(args.out)
    print(f"wrote {out / 'ablation.json'}, {out / 'ablation.md'}, {out / 'ablation.png'}"
          + (f" and {out / 'index.html'}" if args.html else "") + f" ({summary['seconds']} s)")
    return 0
