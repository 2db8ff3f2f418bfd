"""``audiopg pretrain``: pre-train a masked autoencoder on the procedural world.

Examples::

    audiopg pretrain --preset tiny --minutes 8 --out runs/tiny
    audiopg pretrain --preset tiny --steps 2000 --seed 1 --out runs/t1 --set model.depth=4 --set world.seconds=1.28
    audiopg pretrain --config my.yaml --out runs/x
    audiopg pretrain --resume runs/tiny                       # continue to the planned end
    torchrun --nproc_per_node 4 -m audiopg pretrain --preset base --steps 20000 --out runs/base
"""
from __future__ import annotations

import argparse
from pathlib import Path

from audiopg.cli.common import natural_int, overwrite_arg, positive_float, positive_int
from audiopg.cli.main import run_command
from audiopg.core.errors import ConfigError
from audiopg.train.config import build_pretrain_config
from audiopg.train.pretrain import pretrain
from audiopg.train.run_dir import check_resume_config, load_run_config

DESCRIPTION = """\
Pre-train an AudioMAE-style masked autoencoder on clips synthesized on the fly
(synthesis and log-mel on the training device, no recordings).  Settings come
from the model preset's defaults, then --config FILE (YAML/JSON), then --set
key=value, then the flags below.  Keys: model.preset, model.<ModelConfig field>,
world.preset, world.<world key>, batch_size, steps, minutes, lr, min_lr,
warmup_fraction, warmup_steps, weight_decay, betas, grad_clip, seed,
stats_clips, save_every_minutes, compile, device, prefetch, fit_steps, progress
(each is documented in audiopg/train/config.py).

The run folder gets config.json, metrics.jsonl, state.pt (resumable, saved after
the first step, every save_every_minutes, on SIGINT/SIGTERM and at the end), and at the end
encoder.safetensors and reconstructions.png.  Under torchrun, batch_size is per
process and only rank 0 writes files.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pre-train an encoder on the procedural world",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", help="model preset: tiny (CPU, minutes), small, base (default: tiny)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="total optimizer steps")
    length.add_argument("--minutes", type=positive_float,
                        help="wall-clock budget in minutes; the schedule is fitted to it after timing a few steps")
    p.add_argument("--out", metavar="RUN_DIR",
                   help="run folder to create (must not hold a run already, except one stopped before its first save)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR to its planned end")
    overwrite_arg(p, what="run folder given to --out")
    p.add_argument("--batch-size", type=positive_int, help="clips per step (per process under torchrun)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the preset's)")
    p.add_argument("--seed", type=natural_int, help="seed of the world draws, the masks and the initial weights")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one setting, e.g. model.depth=2, world.seconds=1.28, grad_clip=0 (repeatable)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch


    flags = {
        "preset": args.preset,
        "steps": args.steps,
        "minutes": args.minutes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "compile": args.compile,
        "device": args.device,
        "progress": False if args.no_progress else None,
    }
    try:
        if args.resume:
            if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
                raise ConfigError("out", "give either --out (a new run) or --resume (an existing one), not both")
            if args.overwrite:
                raise ConfigError("overwrite", "replaces the run given to --out; --resume continues a run")
            saved, _ = load_run_config(args.resume)
            config = build_pretrain_config(args.config, args.set, flags, base=saved.to_dict())
            check_resume_config(saved, config, args.resume)
            result = pretrain(config, args.resume, resume=True)
        else:
            if not args.out:
                raise ConfigError("out", "give the run folder: --out RUN_DIR (or --resume RUN_DIR to continue one)")
            config = build_pretrain_config(args.config, args.set, flags)
            result = pretrain(config, args.out, overwrite=args.overwrite)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if result.signal is not None:
        return 128 + int(result.signal)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m audiopg.cli.pretrain pretrain ...``: this command alone, with the main CLI's error handling."""

    parser = argparse.ArgumentParser(prog="audiopg")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
