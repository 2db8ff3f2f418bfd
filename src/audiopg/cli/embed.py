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
from audiopg.api.hub import plan_upload, push_to_hub, require_hub
from audiopg.api.onnx_export import export_onnx, require_onnx
from audiopg.cli.common import layer_arg, overwrite_arg, positive_int
from audiopg.core.errors import ConfigError
from audiopg.core.hub import repo_id_syntax
from audiopg.core.io import check_new_file
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
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="run folder, model folder, encoder.safetensors or a Hugging Face Hub id owner/name[@revision]")
    p.add_argument("--out", required=True, type=Path, help="output name: OUT.npy plus OUT.csv (or OUT.parquet)")
    _pooling_args(p, "default: the model's")
    p.add_argument("--batch-size", type=positive_int, default=32, help="clips loaded, and windows encoded, per batch (default 32)")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available, default), cpu, cuda:0 ...")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable/corrupt/empty files, listing them, instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    overwrite_arg(p, what="OUT.npy and index")
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
    overwrite_arg(p, "--force", what="model folder")
    _pooling_args(p, "the default to record; the one not given: the run's")
    p.add_argument("--onnx", type=Path, metavar="FILE",
                   help="also write the encoder as an ONNX graph (log-mel in, embedding out; docs/export.md); "
                        "needs pip install audiopg[onnx]")
    p.add_argument("--push-to-hub", metavar="REPO_ID",
                   help="upload the model folder (and the --onnx file when it lies inside it) to this Hugging Face "
                        "Hub repository, created when missing; needs pip install audiopg[hub] and a login")
    p.add_argument("--revision", metavar="BRANCH", help="with --push-to-hub: the branch to commit to (default main)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument("--dry-run", action="store_true",
                   help="with --push-to-hub: print what would be uploaded and send nothing")
    p.set_defaults(func=run_export)


# ----------------------------------------------------------------------------- audiopg embed
def run_embed(args: argparse.Namespace) -> int:
    npy_path, index_path, _ = output_paths(args.out)
    check_index_format(index_path)  # fails before any work
    for path in (npy_path, index_path):
        check_new_file(path, overwrite=args.overwrite)
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
    if result.truncated:
        print(f"warning: {len(result.truncated)} truncated file(s), shorter than their headers promise, were "
              "embedded as they are (named above)", file=sys.stderr)
    if result.errors:
        print(f"skipped {len(result.errors)} bad file(s), listed in {errors_path}:", file=sys.stderr)
        for _, err in result.errors:
            print(f"  {err}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- audiopg export
def run_export(args: argparse.Namespace) -> int:
    for flag, value in (("--revision", args.revision), ("--private", args.private), ("--dry-run", args.dry_run)):
        if value and not args.push_to_hub:
            raise ConfigError(flag, "only goes with --push-to-hub REPO_ID")
    if args.push_to_hub and not repo_id_syntax(args.push_to_hub):
        raise ConfigError("--push-to-hub", f"expected a Hugging Face Hub repository id owner/name, got "
                                           f"{args.push_to_hub!r}")
    if args.onnx is not None:
        require_onnx(args.onnx)  # before any work
    if args.push_to_hub and not args.dry_run:
        require_hub()
    src, written = export_model(args.run_dir, args.out, results=args.results, name=args.name,
                                overwrite=args.overwrite,
                                layer=args.layer, pool=args.pool, repo_id=args.push_to_hub)
    print(f"exported {src} -> {args.out}: {', '.join(written)}")
    if args.layer is not None or args.pool is not None:
        stored = read_metadata(args.out / "encoder.safetensors")["embedding"]
        print(f"default pooling recorded: layer {stored['layer']}, {stored['pool']}")
    if args.onnx is not None:
        print(f"ONNX graph (log-mel in, embedding out) -> {export_onnx(Encoder.from_pretrained(args.out), args.onnx)}")
    if args.push_to_hub:
        plan = plan_upload(args.out, args.push_to_hub, revision=args.revision, private=args.private)
        where = plan.repo_id + (f" (branch {plan.revision})" if plan.revision else "")
        if args.dry_run:
            print(f"dry run: would upload {', '.join(plan.files)} from {plan.folder} to {where}")
        else:
            print(f"uploaded {', '.join(plan.files)} to {where}: {push_to_hub(plan)}")
    return 0
