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
from audiopg.model.encoder import Encoder

EMBED_DESCRIPTION = """\
Embed every audio file of INPUT -- a folder (recursively), a list file (one path
per line, relative to the list file; blank lines and # comments skipped) or one
audio file -- and write OUT.npy (float32, N x D) plus an index OUT.csv
(row, path, duration_s), or OUT.parquet when OUT ends in .parquet (needs
pyarrow).  A bad file stops the command, naming it; with --skip-bad it is
skipped and listed (printed and written to OUT.errors.csv).  Outputs are
written to temporary files and renamed into place."""


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
    p.add_argument("--layer", type=int, default=-1, help="-1: final output (default); i: after block i")
    p.add_argument("--pool", choices=("mean", "cls"), default="mean", help="token pooling (default mean)")
    p.add_argument("--batch-size", type=int, default=32, help="clips loaded, and windows encoded, per batch (default 32)")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available, default), cpu, cuda:0 ...")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable/corrupt/empty files, listing them, instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_embed)

    p = sub.add_parser(
        "export",
        help="copy a run's encoder into a model folder with a README model card",
        description="Copy encoder.safetensors (and config.json, results.json when present) from RUN_DIR to "
        "MODEL_DIR and write MODEL_DIR/README.md describing the model.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run folder (or encoder.safetensors)")
    p.add_argument("--out", required=True, type=Path, metavar="MODEL_DIR", help="model folder to write")
    p.add_argument("--results", type=Path, help="results JSON for the card (default: RUN_DIR/results.json if present)")
    p.add_argument("--name", help="title of the model card")
    p.add_argument("--force", action="store_true", help="overwrite an existing model folder's files")
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
    print(f"embedded {n} file(s) -> {npy_path} {n}x{d} float32, index {index_path}")
    if result.errors:
        print(f"skipped {len(result.errors)} bad file(s), listed in {errors_path}:", file=sys.stderr)
        for _, err in result.errors:
            print(f"  {err}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- audiopg export
def run_export(args: argparse.Namespace) -> int:
    src, written = export_model(args.run_dir, args.out, results=args.results, name=args.name, force=args.force)
    print(f"exported {src} -> {args.out}: {', '.join(written)}")
    return 0
