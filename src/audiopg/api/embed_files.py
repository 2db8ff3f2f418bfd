"""Embed audio files in bulk: find them, embed them in batches, write ``OUT.npy`` and an index (all or none)."""
from __future__ import annotations

import csv
import importlib.util
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from audiopg.audio.io import AUDIO_EXTENSIONS, load_audio_noting
from audiopg.core.errors import AudioFileError, AudioPGError
from audiopg.core.io import atomic_group
from audiopg.model.encoder import Encoder


def find_audio_files(source: Path) -> list[Path]:
    """Audio files of a folder (recursive, sorted), of a list file (one path per line, relative to the list
    file; blank lines and ``#`` comments skipped), or a single audio file."""
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
    """OUT -> (embeddings .npy, index .csv/.parquet, errors .csv); ``emb.csv`` -> ``emb.npy`` + ``emb.csv``."""
    if out.suffix.lower() in (".csv", ".parquet"):
        stem, index = out.with_suffix(""), out
    else:
        stem, index = out, out.with_name(out.name + ".csv")
    return stem.with_name(stem.name + ".npy"), index, stem.with_name(stem.name + ".errors.csv")


def check_index_format(index_path: Path) -> None:
    if index_path.suffix.lower() == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise AudioPGError(
            f"{index_path}: writing a Parquet index needs pyarrow, which is not installed "
            "(pip install pyarrow, or give --out a name without .parquet for a CSV index)"
        )


@dataclass
class EmbeddedFiles:
    matrix: np.ndarray | None  # float32 (N, D), row i for rows[i]; None when no file could be read
    rows: list[tuple[str, float]] = field(default_factory=list)  # (path, duration in seconds)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of the files skipped
    truncated: list[tuple[str, str]] = field(default_factory=list)  # (path, warning) of files shorter than promised
    layer: int | str = -1  # the pooling used (the encoder's default when the call named none)
    pool: str = "mean"


def embed_files(files: list[Path], encoder: Encoder, *, layer: int | str | None = None, pool: str | None = None,
                batch_size: int = 32, skip_bad: bool = False,
                on_file: Callable[[str | None], None] = lambda message: None) -> EmbeddedFiles:
    """Embed ``files`` ``batch_size`` at a time; a bad file raises AudioFileError naming it, or with ``skip_bad``
    is listed in ``errors``.  ``on_file(message)`` is called once per file (message: why it was skipped, or the
    warning of a truncated file, which is embedded as it is and listed in ``truncated``).  Embeddings that are not
    finite raise AudioPGError naming the files.
    ``layer``/``pool`` None: the encoder's default; one vector per file, so not ``layer="all"``."""
    if batch_size < 1:
        raise AudioPGError(f"--batch-size must be >= 1, got {batch_size}")
    try:
        layer, pool = encoder.resolve_layer_pool(layer, pool)
    except ValueError as err:
        raise AudioPGError(f"--layer/--pool: {err}") from None
    if layer == "all":
        raise AudioPGError("--layer: 'all' gives several vectors per file; use 'concat' for one")
    sr = encoder.sample_rate
    result = EmbeddedFiles(None, layer=layer, pool=pool)
    chunks: list[np.ndarray] = []
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if batch:
            out = encoder.embed([w for _, w in batch], sr, layer=layer, pool=pool, batch_size=batch_size)
            chunk = out.scene.detach().cpu().numpy().astype(np.float32)
            bad = [p for (p, _), row in zip(batch, chunk) if not np.isfinite(row).all()]
            if bad:
                raise AudioPGError(f"{encoder.source or 'the encoder'}: NaN or infinite embedding of {bad[0]}"
                                   + (f" and {len(bad) - 1} more file(s)" if len(bad) > 1 else "")
                                   + "; nothing was written")
            chunks.append(chunk)
            result.rows.extend((p, len(w) / sr) for p, w in batch)
            batch.clear()

    for path in files:
        try:
            wave, note = load_audio_noting(path, sr)
        except AudioFileError as err:
            if not skip_bad:
                raise AudioFileError(f"{err} (use --skip-bad to skip unreadable files)") from None
            result.errors.append((str(path), str(err)))
            on_file(f"skipping bad file: {err}")
            continue
        batch.append((str(path), wave))
        if len(batch) >= batch_size:
            flush()
        if note:
            result.truncated.append((str(path), note))
        on_file(f"warning: {note}" if note else None)
    flush()
    result.matrix = np.concatenate(chunks, axis=0) if chunks else None
    return result


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


def write_embeddings(result: EmbeddedFiles, out: Path) -> tuple[Path, Path, Path]:
    """``OUT.npy``, the index and (when files were skipped) ``OUT.errors.csv``, all renamed into place together;
    a stale errors list from an earlier run is removed.  Raises when no file could be read (after writing the
    errors list)."""
    npy_path, index_path, errors_path = output_paths(out)
    check_index_format(index_path)
    errors = _csv_bytes(["path", "error"], [list(e) for e in result.errors])
    if result.matrix is None:
        with atomic_group() as stage:
            stage(errors_path, lambda f: f.write(errors))
        raise AudioPGError(f"none of the {len(result.errors)} files could be read; see {errors_path}")
    with atomic_group() as stage:
        if result.errors:
            stage(errors_path, lambda f: f.write(errors))
        stage(npy_path, lambda f: np.save(f, result.matrix))
        stage(index_path, lambda f: _write_index(f, result.rows, index_path.suffix.lower() == ".parquet"))
    if not result.errors and errors_path.exists():
        errors_path.unlink()  # a stale list from an earlier run would be misleading
    return npy_path, index_path, errors_path


def _write_index(f, rows: list[tuple[str, float]], parquet: bool) -> None:
    if not parquet:
        f.write(_csv_bytes(["row", "path", "duration_s"], [[i, p, f"{d:.6f}"] for i, (p, d) in enumerate(rows)]))
        return
    import pyarrow as pa  # optional: only for a Parquet index
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "row": pa.array(range(len(rows)), type=pa.int64()),
        "path": pa.array([p for p, _ in rows], type=pa.string()),
        "duration_s": pa.array([d for _, d in rows], type=pa.float64()),
    }), f)
