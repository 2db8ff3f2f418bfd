"""A self-describing model folder from a run: the encoder, its config, results when measured, a model card."""
from __future__ import annotations

from pathlib import Path

from audiopg.api.model_card import load_results, write_model_card
from audiopg.core.errors import AudioPGError
from audiopg.core.io import atomic_copy
from audiopg.model.checkpoint import (
    load_encoder_file,
    resolve_encoder_path,
    save_encoder,
)
from audiopg.model.encoder import Encoder


def export_model(run_dir: Path, out: Path, *, results: Path | None = None, name: str | None = None,
                 force: bool = False, layer: int | str | None = None,
                 pool: str | None = None) -> tuple[Path, list[str]]:
    """Copy ``encoder.safetensors`` (and ``config.json``, ``results.json`` when present) from ``run_dir`` (or an
    encoder file) to ``out`` and write ``out/README.md``.  Returns the encoder file and the names written.

    ``layer``/``pool``: the default pooling to record in the exported file's metadata (``embedding``; the one
    not given is the run's current default); the weights are written unchanged.  Without them the file is
    copied byte for byte."""
    src = resolve_encoder_path(run_dir)
    run_dir = src.parent
    encoder = Encoder.from_pretrained(src)  # strict load: never publish a checkpoint that does not load
    if out.resolve() == run_dir.resolve():
        raise AudioPGError(f"{out}: the model folder must differ from the run folder")
    if (out / "encoder.safetensors").exists() and not force:
        raise AudioPGError(f"{out}: already holds an encoder.safetensors (use --force to overwrite)")
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
    out.mkdir(parents=True, exist_ok=True)
    metadata = encoder.metadata
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
    written.append(write_model_card(out, metadata, measured, name=name).name)
    return src, written
