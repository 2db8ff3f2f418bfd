"""``audiopg synth`` (see and hear the world) and ``audiopg stats`` (its log-mel statistics)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from audiopg.api.world_files import write_world_clips
from audiopg.audio.fbank import FbankConfig
from audiopg.cli.common import natural_int, overwrite_arg, positive_float, positive_int
from audiopg.core.config import write_json
from audiopg.core.device import resolve_device
from audiopg.core.errors import ConfigError
from audiopg.core.io import check_new_file, output_folder
from audiopg.synth.config import list_presets, load_world_config
from audiopg.train.data import compute_fbank_stats


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="render clips of the procedural world to WAV, with their factors and a spectrogram grid")
    _world_args(p)
    p.add_argument("--n", type=positive_int, default=16, help="number of clips (default 16)")
    p.add_argument("--seed", type=natural_int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--html", action="store_true",
                   help="also write index.html: a player, the log-mel spectrogram and the factors of every clip")
    overwrite_arg(p)
    p.set_defaults(func=run_synth)

    p = sub.add_parser("stats", help="log-mel mean and std of the world's clips (the normalization stored with models)")
    _world_args(p)
    p.add_argument("--clips", type=positive_int, default=512, help="clips to measure (default 512)")
    p.add_argument("--mel-bins", type=positive_int, default=128, help="mel bins (default 128)")
    p.add_argument("--seed", type=natural_int, default=0, help="random seed (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="clips per batch (default 32)")
    p.add_argument("--out", type=Path, help="also write the statistics to this JSON file")
    overwrite_arg(p, what="JSON file")
    p.set_defaults(func=run_stats)


def _world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", help=f"world preset ({', '.join(list_presets())}) or a YAML/JSON file")
    p.add_argument("--seconds", type=positive_float, help="clip length in seconds (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a world setting, e.g. --set lowpass.probability=0 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _world_config(args):
    overrides = list(args.set) + ([f"seconds={args.seconds}"] if args.seconds is not None else [])
    return load_world_config(args.preset, overrides)


def run_synth(args) -> int:
    if args.n < 1:
        raise ConfigError("n", f"must be >= 1, got {args.n}")
    cfg = _world_config(args)  # bad settings are named before the output folder is looked at
    with output_folder(args.out, overwrite=args.overwrite, kind="a synth output", marker="factors.jsonl") as tmp:
        write_world_clips(cfg, args.n, args.seed, tmp, resolve_device(args.device), html=args.html)
    print(f"wrote {args.n} clips, factors.jsonl, world.json, spectrograms.png{' and index.html' * args.html} "
          f"to {args.out}")
    return 0


def run_stats(args) -> int:
    if args.clips < 1:
        raise ConfigError("clips", f"must be >= 1, got {args.clips}")
    cfg = _world_config(args)
    if args.out:
        check_new_file(args.out, overwrite=args.overwrite)
    fcfg = FbankConfig(sample_rate=cfg.sample_rate, num_mel_bins=args.mel_bins)
    stats = compute_fbank_stats(cfg, fcfg, n_clips=args.clips, seed=args.seed, device=resolve_device(args.device),
                                batch_size=args.batch_size)
    result = {"preset": str(args.preset), "clips": args.clips, "seed": args.seed, "seconds": cfg.seconds,
              "mel_bins": args.mel_bins, **stats.to_dict()}
    print(json.dumps(result))
    if args.out:
        write_json(args.out, result)
    return 0
