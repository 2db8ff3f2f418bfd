"""``audiopg embed`` (audio files -> embedding matrix) and ``audiopg export`` (run folder -> model folder)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from audiopg.api.embed_files import (
    check_index_format,
    embed_files,
    find_audio_files,
    output_paths,
    write_embeddings,
)
from audiopg.api.export import export_model
from audiopg.cli.common import layer_arg
from audiopg.model.checkpoint import read_metadata
from audiopg.model.encoder import (
    DEFAULT_LAYER,
    DEFAULT_POOL,
    POOLS,
    Encoder,
)

EMBED_DESCRIPTION = """\
Embed every audio file of INPUT -- a folder (recursively), a list file (one path
per line, relative to the list file; blank lines and # comments skipped) or one
audio file -- and write OUT.npy (float32, N x D) plus an index OUT.csv
(row, path, duration_s), or OUT.parquet when OUT ends in .parquet (needs
pyarrow).  A bad file stops the command, naming it; with --skip-bad it is
skipped and listed (printed and written to OUT.errors.csv).  Outputs are
written to temporary files and renamed into place.  Without --layer/--pool
the model's default pooling is used (recorded by `audiopg export`, else
the library default)."""


def _pooling_args(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--layer", type=layer_arg, default=None,
                   help="-1: final output; i: after block i; concat: every block's pooled vector concatenated "
                        f"({default_help}, else {DEFAULT_LAYER})")
    p.add_argument("--pool", choices=POOLS, default=None,
                   help="mean of the patch tokens, the CLS token, or meanstd: their mean and standard deviation "
                        f"over time ({default_help}, else {DEFAULT_POOL})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="embed audio files with a pre-trained encoder: OUT.npy (N, D) plus an index",
        description=EMBED_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="INPUT", help="audio folder (recursive), list file, or one audio file")
    p.add_argument("--checkpoint", required=True, type=Path, help="run folder, model folder or encoder.safetensors")
    p.add_argument("--out", required=True, type=Path, help="output name: OUT.npy plus OUT.csv (or OUT.parquet)")
    _pooling_args(p, "default: the model's")
    p.add_argument("--batch-size", type=int, default=32, help="clips loaded, and windows encoded, per batch (default 32)")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available, default), cpu, cuda:0 ...")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable/corrupt/empty files, listing them, instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_embed)

    p = sub.add_parser(
        "export",
        help="copy a run's encoder into a model folder with a README model card",
        description="Copy encoder.safetensors (and config.json, results.json when present) from RUN_DIR to "
        "MODEL_DIR and write MODEL_DIR/README.md describing the model.  --layer/--pool record the default "
        "pooling in the exported encoder's metadata (the weights are unchanged; the run folder is not touched).",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run folder (or encoder.safetensors)")
    p.add_argument("--out", required=True, type=Path, metavar="MODEL_DIR", help="model folder to write")
    p.add_argument("--results", type=Path, help="results JSON for the card (default: RUN_DIR/results.json if present)")
    p.add_argument("--name", help="title of the model card")
    p.add_argument("--force", action="store_true", help="overwrite an existing model folder's files")
    _pooling_args(p, "the default to record; the one not given: the run's")
    p.set_defaults(func=run_export)


# ----------------------------------------------------------------------------- audiopg embed
def run_embed(args: argparse.Namespace) -> int:
    check_index_format(output_paths(args.out)[1])  # fails before any work
    files = find_audio_files(args.input)
    encoder = Encoder.from_pretrained(args.checkpoint, device=args.device)
    with tqdm(total=len(files), unit="file", desc="embed", disable=args.no_progress, file=sys.stderr) as bar:
        def on_file(message: str | None) -> None:
            if message:
                bar.write(message, file=sys.stderr)
            bar.update(1)

        result = embed_files(files, encoder, layer=args.layer, pool=args.pool, batch_size=args.batch_size,
                             skip_bad=args.skip_bad, on_file=on_file)
    npy_path, index_path, errors_path = write_embeddings(result, args.out)
    n, d = result.matrix.shape
    print(f"embedded {n} file(s) -> {npy_path} {n}x{d} float32 (layer {result.layer}, {result.pool}-pooled), "
          f"index {index_path}")
    if result.errors:
        print(f"skipped {len(result.errors)} bad file(s), listed in {errors_path}:", file=sys.stderr)
        for _, err in result.errors:
            print(f"  {err}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- audiopg export
def run_export(args: argparse.Namespace) -> int:
    src, written = export_model(args.run_dir, args.out, results=args.results, name=args.name, force=args.force,
                                layer=args.layer, pool=args.pool)
    print(f"exported {src} -> {args.out}: {', '.join(written)}")
    if args.layer is not None or args.pool is not None:
        stored = read_metadata(args.out / "encoder.safetensors")["embedding"]
        print(f"default pooling recorded: layer {stored['layer']}, {stored['pool']}")
    return 0
