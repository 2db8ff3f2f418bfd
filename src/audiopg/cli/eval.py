"""Subcommands ``probe``, ``finetune`` and ``download`` (registered in :mod:`audiopg.cli.main`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audiopg.cli.common import (
    layer_arg,
    natural_int,
    overwrite_arg,
    positive_float,
    positive_int,
    stderr_log,
    threads_arg,
)
from audiopg.core.device import set_torch_threads
from audiopg.core.errors import AudioPGError
from audiopg.core.io import output_folder
from audiopg.eval.datasets import DATASETS, load_dataset
from audiopg.eval.download import DOWNLOADS, download_dataset
from audiopg.eval.finetune import list_recipes, load_recipe, run_finetune
from audiopg.eval.probe import parse_baselines, run_probe, truncation_note
from audiopg.eval.report import format_score
from audiopg.model.encoder import DEFAULT_LAYER, DEFAULT_POOL, POOLS

__all__ = ["register"]


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=DATASETS, help="dataset and protocol")
    p.add_argument("--data-root", required=True, type=Path,
                   help="dataset folder in its official layout (or the folder above it); for manifest: the CSV file")
    p.add_argument("--protocol", choices=("own", "loso"), default=None,
                   help="fsdd only: own split (takes 0-4 test) or leave-one-speaker-out (default own)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable, empty, corrupt or missing audio files (listed in the report) instead of "
                        "stopping at the first one")
    p.add_argument("--seed", type=natural_int, default=0, help="seed of cross-validation folds and random init (default 0)")


def _probe(args: argparse.Namespace) -> int:

    log = stderr_log(args.quiet)
    set_torch_threads(args.threads, log)
    ds = load_dataset(args.task, args.data_root, protocol=args.protocol, target_column=args.target_column,
                      target_type=args.target_type, skip_bad=args.skip_bad, seed=args.seed)
    log(f"{ds.name}: {len(ds.items)} clips; protocol: {ds.protocol.description}")
    for note in ds.notes:
        log(f"note: {note}")
    baselines = parse_baselines(args.baselines)
    with output_folder(args.out, overwrite=args.overwrite, kind="probe results", marker="results.json") as tmp:
        results = run_probe(
            ds, tmp, checkpoint=args.checkpoint, baselines=baselines, pretrained=not args.no_pretrained,
            layer=args.layer, pool=args.pool, device=args.device, batch_size=args.batch_size, seed=args.seed,
            skip_bad=args.skip_bad, cache_dir=_cache_dir(args.cache_dir), max_seconds=args.max_seconds,
            progress=not args.quiet, log=log,
        )
    metric = results["dataset"]["metric"]
    for name, m in results["models"].items():
        print(f"{name:12s} {metric} {format_score(metric, m['mean'])} ± {format_score(metric, m['std'])}")
    print(f"wrote {Path(args.out) / 'results.json'} and results.md")
    if results["dataset"]["truncated"]:
        print(f"warning: {truncation_note(results['dataset']['truncated'])}", file=sys.stderr)
    return 0


def _cache_dir(text: str | None):
    """None -> the default cache; 'none'/'off' -> False (no cache); else the folder."""
    if text is None:
        return None
    if text.lower() in ("none", "off"):
        return False
    return Path(text)


def _finetune(args: argparse.Namespace) -> int:

    log = stderr_log(args.quiet)
    set_torch_threads(args.threads, log)
    recipe = load_recipe(args.recipe, args.set or [])
    ds = load_dataset(args.task, args.data_root, protocol=args.protocol, skip_bad=args.skip_bad, seed=args.seed)
    log(f"{ds.name}: {len(ds.items)} clips; protocol: {ds.protocol.description}")
    for note in ds.notes:
        log(f"note: {note}")
    baselines = parse_baselines(args.baselines)
    if "handcrafted" in baselines:
        log("note: the handcrafted baseline has nothing to fine-tune; it is run by `audiopg probe`")
        baselines = [b for b in baselines if b != "handcrafted"]
    with output_folder(args.out, overwrite=args.overwrite, kind="fine-tuning results", marker="recipe.yaml") as tmp:
        results = run_finetune(ds, args.checkpoint, recipe, tmp, device=args.device, skip_bad=args.skip_bad,
                               baselines=baselines, progress=not args.quiet, log=log)
    metric = results["dataset"]["metric"]
    for name, m in results["models"].items():
        print(f"{name:12s} {metric} {format_score(metric, m['mean'])} ± {format_score(metric, m['std'])}")
    print(f"wrote {Path(args.out) / 'results.json'}, results.md, metrics.jsonl and checkpoints")
    return 0


def _download(args: argparse.Namespace) -> int:

    if args.list:
        for name, src in DOWNLOADS.items():
            print(f"{name}: {src.title} [{src.licence}]")
            for r in src.remotes:
                print(f"  {r.url}" + (f"  md5 {r.md5}" if r.md5 else "  (no published checksum)")
                      + (f"  {r.approx_size}" if r.approx_size else ""))
        return 0
    if args.dataset is None or args.root is None:

        raise AudioPGError("DATASET and --root are required (or use --list)")
    data_root = download_dataset(args.dataset, args.root, connect_timeout=args.timeout,
                                 keep_archives=not args.remove_archives, progress=not args.quiet,
                                 log=stderr_log(args.quiet))
    print(data_root)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # ---------------------------------------------------------------- probe
    p = sub.add_parser(
        "probe", help="linear probe of frozen embeddings on a real dataset (with baselines)",
        description="Embed every clip with the frozen encoder (and the baselines), fit a logistic-regression "
                    "(or ridge) probe per split of the dataset's protocol, choosing the regularization on the "
                    "training part only, and write results.json, results.md and confusion-matrix PNGs to --out.",
    )
    _data_args(p)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="run folder, model folder or encoder.safetensors (needed unless only handcrafted runs)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    overwrite_arg(p)
    p.add_argument("--baselines", default="random,handcrafted",
                   help="comma-separated: random (same architecture, random init), handcrafted (log-mel stats); "
                        "'none' for no baseline (default: random,handcrafted)")
    p.add_argument("--no-pretrained", action="store_true", help="run the baselines only")
    p.add_argument("--layer", type=layer_arg, default=None,
                   help="encoder layer: -1 = final output, i = after block i, concat = every block's pooled vector "
                        f"concatenated (default: the checkpoint's, else {DEFAULT_LAYER})")
    p.add_argument("--pool", choices=POOLS, default=None,
                   help="mean of the patch tokens, the CLS token, or meanstd = their mean and standard deviation "
                        f"over time (default: the checkpoint's, else {DEFAULT_POOL})")
    p.add_argument("--target-column", default=None, help="manifest only: column holding the target (default label)")
    p.add_argument("--target-type", choices=("auto", "class", "continuous"), default="auto",
                   help="manifest only: classes or a continuous target (ridge regression); auto-detected by default")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=positive_int, default=32, help="encoder windows per forward pass")
    p.add_argument("--max-seconds", type=positive_float, default=None, help="use at most the first N seconds of each clip")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache folder (default $AUDIOPG_CACHE/embeddings or ~/.cache/audiopg/embeddings; "
                        "'none' disables)")
    p.add_argument("--threads", type=threads_arg, default="auto",
                   help="torch CPU threads: a number, or auto (1 when the machine is already busy; default)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_probe)

    # ---------------------------------------------------------------- finetune

    f = sub.add_parser(
        "finetune", help="fine-tune the encoder with a linear head on a real dataset",
        description="Fine-tune encoder + linear head on every split of the dataset's protocol with a recipe "
                    f"(bundled: {', '.join(list_recipes())}; or a YAML file). Writes metrics.jsonl, per-split "
                    "safetensors checkpoints, results.json, results.md and confusion-matrix PNGs to --out.",
    )
    _data_args(f)
    f.add_argument("--checkpoint", required=True, type=Path, help="run folder, model folder or encoder.safetensors")
    f.add_argument("--recipe", required=True, help="bundled recipe name or a YAML file")
    f.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe value (repeatable), "
                                                                        "e.g. --set epochs=2 --set folds=1")
    f.add_argument("--out", required=True, type=Path, help="output folder")
    overwrite_arg(f)
    f.add_argument("--baselines", default="none", help="'random' also fine-tunes a randomly initialized encoder "
                                                        "(default none)")
    f.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    f.add_argument("--threads", type=threads_arg, default="auto",
                   help="torch CPU threads: a number, or auto (1 when the machine is already busy; default)")
    f.add_argument("--quiet", action="store_true", help="no progress output")
    f.set_defaults(func=_finetune)

    # ---------------------------------------------------------------- download

    d = sub.add_parser(
        "download", help="download an evaluation dataset from its official address",
        description="Download (resumable, checksum-verified where a checksum is published) and extract a "
                    "dataset into --root; prints the folder to pass as --data-root.",
    )
    d.add_argument("dataset", nargs="?", choices=tuple(DOWNLOADS), help="which dataset")
    d.add_argument("--root", type=Path, help="folder to download and extract into")
    d.add_argument("--timeout", type=positive_float, default=10.0, help="connect / stall timeout in seconds (default 10)")
    d.add_argument("--remove-archives", action="store_true", help="delete the archives after extraction")
    d.add_argument("--list", action="store_true", help="list the datasets, their URLs and checksums")
    d.add_argument("--quiet", action="store_true", help="no progress output")
    d.set_defaults(func=_download)
