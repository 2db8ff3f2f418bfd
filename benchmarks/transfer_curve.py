"""Transfer curve on a CPU: probe (and fine-tuning) accuracy against pre-training minutes and steps, per recipe.

    python benchmarks/transfer_curve.py --out runs/curve                       # paper recipe, 5/10/20/30 min
    python benchmarks/transfer_curve.py --out runs/curve \\
        --recipe "latent objective=latent masks_per_clip=4 probe.pool=meanstd"  # + a recipe, step-matched to paper
    python benchmarks/transfer_curve.py --out runs/curve --budgets 5,10 --no-finetune   # less work
    python benchmarks/transfer_curve.py --out runs/curve ...                   # again: continues, skips what is done

A recipe is a name, pre-training overrides (as ``audiopg pretrain --set``) and the probe's pooling
(``probe.layer=``, ``probe.pool=``; without it, the pooling the runs record); ``paper`` (the default pre-training) is built in.  Every recipe is
pre-trained (``tiny``) for each budget of CPU minutes and, unless ``--steps`` is given, also for the step
count the ``--steps-of`` recipe reached in that budget -- so a recipe's code speed and its content can be
told apart.  Every encoder gets the linear probes of ``benchmarks/transfer_cpu.py`` (FSDD own split, FSDD
leave-one-speaker-out, the ESC-50 part) against random init and handcrafted features; at the largest budget
the encoders are also fine-tuned (recipes ``fsdd-tiny`` on FSDD leave-one-speaker-out, ``esc50-tiny`` on the
ESC-50 part) against the same network from random init.  Every run is a folder under OUT (see
docs/experiments.md, "Transfer curve"); OUT/curve.json, curve.md and curve.png are rewritten as runs finish,
and the table is printed last.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audiopg.cli.common import experiment_args, stderr_log
from audiopg.core.device import set_torch_threads
from audiopg.core.errors import AudioPGError, ConfigError
from audiopg.experiments.curve import PAPER, format_table, parse_recipe, run_curve
from audiopg.experiments.transfer import RunInterrupted


def _numbers(text: str, kind: type, flag: str) -> list:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}: expected comma-separated numbers or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="docs/experiments.md (\"Transfer curve\") describes the outputs.")
    p.add_argument("--out", required=True, type=Path, help="curve folder (created, or continued)")
    p.add_argument("--recipe", action="append", default=[], metavar="'NAME KEY=VALUE ...'",
                   help="define a recipe (repeatable): a name, pre-training overrides and probe.layer= / probe.pool=; "
                        "'paper' (no overrides) is built in")
    p.add_argument("--recipes", default=None, metavar="NAMES",
                   help="comma-separated recipes to run (default: every --recipe, or paper when none is given)")
    p.add_argument("--budgets", default="5,10,20,30", type=lambda t: _numbers(t, float, "--budgets"),
                   help="pre-training budgets in wall-clock minutes (default 5,10,20,30; 'none' for none)")
    p.add_argument("--steps", default=None, type=lambda t: _numbers(t, int, "--steps"),
                   help="explicit step counts for every recipe, instead of matching the --steps-of recipe's")
    p.add_argument("--steps-of", default="paper", metavar="RECIPE",
                   help="reference recipe: the others are also trained for the steps it made in each budget, and "
                        "compared with it (default paper; 'none': no step-matched runs)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per budget (default 1)")
    p.add_argument("--largest-seeds", type=int, default=2, help="seeds at the largest budget (default 2)")
    p.add_argument("--no-finetune", action="store_true", help="probes only, no fine-tuning at the largest budget")
    p.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of both fine-tuning recipes (repeatable), e.g. folds=2")
    experiment_args(p)
    return p


def select_recipes(defined: list[str], chosen: str | None, steps_of: str | None, matching: bool) -> list:
    """The recipes to run: ``chosen`` (default: every defined one, else paper), plus the ``steps_of`` reference
    when its step counts are needed."""
    table = {PAPER.name: PAPER}
    for text in defined:
        r = parse_recipe(text)
        table[r.name] = r
    if chosen is not None:
        names = [n.strip() for n in chosen.split(",") if n.strip()]
    else:
        names = [parse_recipe(t).name for t in defined] or [PAPER.name]
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        raise ConfigError("recipes", f"unknown recipe {unknown[0]!r} (defined: {', '.join(table)})" if unknown
                          else "no recipe given")
    if matching and steps_of is not None and steps_of not in names:
        if steps_of not in table:
            raise ConfigError("steps_of", f"unknown recipe {steps_of!r} (defined: {', '.join(table)})")
        names = [steps_of] + names
    return [table[n] for n in dict.fromkeys(names)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = stderr_log()
    steps_of = None if args.steps_of.lower() == "none" else args.steps_of
    cache_dir = args.cache_dir
    if cache_dir is not None:
        cache_dir = False if cache_dir.lower() in ("none", "off") else Path(cache_dir)
    try:
        recipes = select_recipes(args.recipe, args.recipes, steps_of, matching=not args.steps and bool(args.budgets))
        set_torch_threads(args.threads, log)
        summary = run_curve(
            args.out, recipes=recipes, budgets=args.budgets, steps=args.steps, steps_of=steps_of, seeds=args.seeds,
            largest_seeds=args.largest_seeds, tasks=args.tasks, finetune=not args.no_finetune,
            finetune_overrides=args.finetune_set, overrides=args.set, model_preset=args.model_preset,
            data_root=args.data_root, device=args.device, probe_batch_size=args.probe_batch_size,
            cache_dir=cache_dir, progress=not args.no_progress, log=log)
    except RunInterrupted as err:
        log(f"transfer_curve: {err}")
        return 128 + int(err.signal) if err.signal is not None else 130
    except (ConfigError, AudioPGError) as err:  # bad input: one line, no traceback
        print(f"transfer_curve: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    log(f"wrote {out / 'curve.json'}, {out / 'curve.md'} and {out / 'curve.png'} ({summary['seconds']} s)")
    print("\n".join(format_table(summary)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
