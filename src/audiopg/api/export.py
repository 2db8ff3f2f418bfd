"""A self-describing model folder from a run: the encoder, its config, results when measured, a model card."""
from __future__ import annotations

from pathlib import Path

from audiopg.api.model_card import load_results, write_model_card
from audiopg.core.errors import AudioPGError
from audiopg.core.io import atomic_copy, output_folder
from audiopg.model.checkpoint import (
    load_encoder_file,
    resolve_encoder_path,
    save_encoder,
)
from audiopg.model.encoder import Encoder

RUN_FILES = ("state.pt", "metrics.jsonl")  # what marks a run folder (a model folder holds neither)


def export_model(run_dir: Path, out: Path, *, results: Path | None = None, name: str | None = None,
                 overwrite: bool = False, layer: int | str | None = None,
                 pool: str | None = None, repo_id: str | None = None) -> tuple[Path, list[str]]:
    """Copy ``encoder.safetensors`` (and ``config.json``, ``results.json`` when present) from ``run_dir`` (or an
    encoder file) to ``out`` and write ``out/README.md``.  Returns the encoder file and the names written.

    ``layer``/``pool``: the default pooling to record in the exported file's metadata (``embedding``; the one
    not given is the run's current default); the weights are written unchanged.  Without them the file is
    copied byte for byte.  ``out`` is written whole into a new folder and swapped in: an existing model folder is
    replaced only with ``overwrite``, and a run folder never.  ``repo_id``: the Hugging Face Hub repository the
    folder is meant for (the card's usage lines name it)."""
    src, out = resolve_encoder_path(run_dir), Path(out)
    run_dir = src.parent
    encoder = Encoder.from_pretrained(src)  # strict load: never publish a checkpoint that does not load
    if out.resolve() == run_dir.resolve() or any((out / f).exists() for f in RUN_FILES):
        raise AudioPGError(f"{out}: is a run folder; export writes a model folder beside it (choose another --out)")
    embedding = None
    if layer is not None or pool is not None:
        try:
            layer, pool = encoder.resolve_layer_pool(layer, pool)
        except ValueError as err:
            raise AudioPGError(f"--layer/--pool: {err}") from None
        if layer == "all":
            raise AudioPGError("--layer: 'all' gives several vectors per clip; a default must give one "
                               "(an int or 'concat')")
        embedding = {"layer": layer, "pool": pool}
    results_file = results if results is not None else run_dir / "results.json"
    measured = None
    if results is not None or results_file.exists():
        try:
            measured = load_results(results_file)
        except ValueError as err:
            raise AudioPGError(str(err)) from None
    with output_folder(out, overwrite=overwrite, kind="a model folder", marker="README.md") as tmp:
        written = _write_model_folder(tmp, src, run_dir, encoder.metadata, embedding, results_file, measured, name,
                                      repo_id)
    return src, written


def _write_model_folder(out: Path, src: Path, run_dir: Path, metadata: dict, embedding: dict | None,
                        results_file: Path, measured: dict | None, name: str | None,
                        repo_id: str | None) -> list[str]:
    if embedding is None:
        atomic_copy(src, out / "encoder.safetensors")
    else:
        state, metadata = load_encoder_file(src)
        metadata["embedding"] = embedding
        save_encoder(out / "encoder.safetensors", state, metadata)
    written = ["encoder.safetensors"]
    if (run_dir / "config.json").is_file():
        atomic_copy(run_dir / "config.json", out / "config.json")
        written.append("config.json")
    if measured is not None:
        atomic_copy(results_file, out / "results.json")
        written.append("results.json")
    written.append(write_model_card(out, metadata, measured, name=name, repo_id=repo_id).name)
    return written
