"""``audiopg embed`` (audio files -> embedding matrix) and ``audiopg export`` (run folder -> model folder with a card).

``audiopg embed INPUT --checkpoint RUN --out OUT`` embeds every audio file of a
folder (recursively), of a list file (one path per line; relative paths are
relative to the list file; blank lines and ``#`` comments are skipped) or a
single audio file, and writes

* ``OUT.npy``: float32 ``(N, D)``, row ``i`` for the ``i``-th file of the index;
* the index: ``OUT.csv`` with columns ``row, path, duration_s`` -- or
  ``OUT.parquet`` when OUT ends in ``.parquet`` (needs pyarrow); OUT may end in
  ``.csv`` too (``emb.csv`` -> ``emb.npy`` + ``emb.csv``);
* with ``--skip-bad``, ``OUT.errors.csv`` (``path, error``) listing the files
  that could not be read; they are also printed.  Without ``--skip-bad`` the
  first bad file stops the command with an error naming it, and nothing is
  written.

Every output is written to a temporary file and renamed into place.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import os
import sys
import tempfile
from pathlib import Path

from audiopg.core.errors import AudioFileError, AudioPGError
from audiopg.core.io import atomic_copy

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


# ----------------------------------------------------------------------------- inputs and outputs
def find_audio_files(source: Path) -> list[Path]:
    """Audio files of a folder (recursive, sorted), of a list file, or a single audio file."""
    from audiopg.audio.io import AUDIO_EXTENSIONS

    if source.is_dir():
        files = sorted(
            (p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()),
            key=lambda p: p.relative_to(source).as_posix(),
        )
        if not files:
            raise AudioPGError(f"{source}: no audio files found (looked for {', '.join(AUDIO_EXTENSIONS)})")
        return files
    if not source.exists():
        raise AudioPGError(f"{source}: no such folder or file")
    if source.suffix.lower() in AUDIO_EXTENSIONS:
        return [source]
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise AudioPGError(f"{source}: cannot read the list file ({err})") from None
    files = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        files.append(path if path.is_absolute() else source.parent / path)
    if not files:
        raise AudioPGError(f"{source}: the list file names no audio files")
    return files


def output_paths(out: Path) -> tuple[Path, Path, Path]:
    """OUT -> (embeddings .npy, index .csv/.parquet, errors .csv)."""
    if out.suffix.lower() in (".csv", ".parquet"):
        stem, index = out.with_suffix(""), out
    else:
        stem, index = out, out.with_name(out.name + ".csv")
    return stem.with_name(stem.name + ".npy"), index, stem.with_name(stem.name + ".errors.csv")


def _temp_path(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _commit(pending: list[tuple[Path, Path]]) -> None:
    """Rename every finished temp file into place (after all of them were written)."""
    for tmp, final in pending:
        os.replace(tmp, final)


# ----------------------------------------------------------------------------- audiopg embed
def run_embed(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from audiopg.audio.io import load_audio
    from audiopg.model.encoder import Encoder

    if args.batch_size < 1:
        raise AudioPGError(f"--batch-size must be >= 1, got {args.batch_size}")
    npy_path, index_path, errors_path = output_paths(args.out)
    parquet = index_path.suffix.lower() == ".parquet"
    if parquet and importlib.util.find_spec("pyarrow") is None:
        raise AudioPGError(
            f"{index_path}: writing a Parquet index needs pyarrow, which is not installed "
            "(pip install pyarrow, or give --out a name without .parquet for a CSV index)"
        )
    files = find_audio_files(args.input)
    encoder = Encoder.from_pretrained(args.checkpoint, device=args.device)
    try:
        encoder._check_layer_pool(args.layer, args.pool)
    except ValueError as err:
        raise AudioPGError(f"--layer/--pool: {err}") from None
    sr = encoder.sample_rate

    rows: list[tuple[str, float]] = []
    chunks: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        out = encoder.embed([w for _, w in batch], sr, layer=args.layer, pool=args.pool, batch_size=args.batch_size)
        chunks.append(out.scene.detach().cpu().numpy().astype(np.float32))
        rows.extend((p, len(w) / sr) for p, w in batch)
        batch.clear()

    with tqdm(total=len(files), unit="file", desc="embed", disable=args.no_progress, file=sys.stderr) as bar:
        for path in files:
            try:
                wave = load_audio(path, sr)
            except AudioFileError as err:
                if not args.skip_bad:
                    raise AudioFileError(f"{err} (use --skip-bad to skip unreadable files)") from None
                errors.append((str(path), str(err)))
                bar.write(f"skipping bad file: {err}", file=sys.stderr)
            else:
                batch.append((str(path), wave))
                if len(batch) >= args.batch_size:
                    flush()
            bar.update(1)
        flush()

    pending: list[tuple[Path, Path]] = []
    try:
        if errors:
            tmp = _temp_path(errors_path)
            tmp.write_text(_csv_text(["path", "error"], [list(e) for e in errors]))
            pending.append((tmp, errors_path))
        if not rows:
            _commit(pending)
            raise AudioPGError(f"none of the {len(files)} files could be read; see {errors_path}")
        matrix = np.concatenate(chunks, axis=0)
        tmp = _temp_path(npy_path)
        with open(tmp, "wb") as f:
            np.save(f, matrix)
        pending.append((tmp, npy_path))
        tmp = _temp_path(index_path)
        if parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({
                "row": pa.array(range(len(rows)), type=pa.int64()),
                "path": pa.array([p for p, _ in rows], type=pa.string()),
                "duration_s": pa.array([d for _, d in rows], type=pa.float64()),
            })
            pq.write_table(table, str(tmp))
        else:
            tmp.write_text(_csv_text(["row", "path", "duration_s"], [[i, p, f"{d:.6f}"] for i, (p, d) in enumerate(rows)]))
        pending.append((tmp, index_path))
        _commit(pending)
        pending = []
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
    if not errors and errors_path.exists():
        errors_path.unlink()  # a stale list from an earlier run would be misleading

    print(f"embedded {len(rows)} file(s) -> {npy_path} {matrix.shape[0]}x{matrix.shape[1]} float32, index {index_path}")
    if errors:
        print(f"skipped {len(errors)} bad file(s), listed in {errors_path}:", file=sys.stderr)
        for path, err in errors:
            print(f"  {err}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- audiopg export
def run_export(args: argparse.Namespace) -> int:
    from audiopg.api.model_card import load_results, write_model_card
    from audiopg.model.checkpoint import resolve_encoder_path
    from audiopg.model.encoder import Encoder

    src = resolve_encoder_path(args.run_dir)
    run_dir = src.parent
    encoder = Encoder.from_pretrained(src)  # strict load: never publish a checkpoint that does not load
    out: Path = args.out
    if out.resolve() == run_dir.resolve():
        raise AudioPGError(f"{out}: the model folder must differ from the run folder")
    if (out / "encoder.safetensors").exists() and not args.force:
        raise AudioPGError(f"{out}: already holds an encoder.safetensors (use --force to overwrite)")
    results_file = args.results if args.results is not None else (run_dir / "results.json")
    results = None
    if args.results is not None or results_file.exists():
        try:
            results = load_results(results_file)
        except ValueError as err:
            raise AudioPGError(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_copy(src, out / "encoder.safetensors")
    copied = ["encoder.safetensors"]
    if (run_dir / "config.json").is_file():
        atomic_copy(run_dir / "config.json", out / "config.json")
        copied.append("config.json")
    if results is not None:
        atomic_copy(results_file, out / "results.json")
        copied.append("results.json")
    card = write_model_card(out, encoder.metadata, results, name=args.name)
    copied.append(card.name)
    print(f"exported {src} -> {out}: {', '.join(copied)}")
    return 0
