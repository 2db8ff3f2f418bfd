"""A self-describing model folder from a run: the encoder, its config, results when measured, a model card."""
from __future__ import annotations

from pathlib import Path

from audiopg.api.model_card import load_results, write_model_card
from audiopg.core.errors import AudioPGError
from audiopg.core.io import atomic_copy
from audiopg.model.checkpoint import resolve_encoder_path
from audiopg.model.encoder import Encoder


def export_model(run_dir: Path, out: Path, *, results: Path | None = None, name: str | None = None,
                 force: bool = False) -> tuple[Path, list[str]]:
    """Copy ``encoder.safetensors`` (and ``config.json``, ``results.json`` when present) from ``run_dir`` (or an
    encoder file) to ``out`` and write ``out/README.md``.  Returns the encoder file and the names written."""
    src = resolve_encoder_path(run_dir)
    run_dir = src.parent
    encoder = Encoder.from_pretrained(src)  # strict load: never publish a checkpoint that does not load
    if out.resolve() == run_dir.resolve():
        raise AudioPGError(f"{out}: the model folder must differ from the run folder")
    if (out / "encoder.safetensors").exists() and not force:
        raise AudioPGError(f"{out}: already holds an encoder.safetensors (use --force to overwrite)")
    results_file = results if results is not None else run_dir / "results.json"
    measured = None
    if results is not None or results_file.exists():
        try:
            measured = load_results(results_file)
        except ValueError as err:
            raise AudioPGError(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_copy(src, out / "encoder.safetensors")
    written = ["encoder.safetensors"]
    if (run_dir / "config.json").is_file():
        atomic_copy(run_dir / "config.json", out / "config.json")
        written.append("config.json")
    if measured is not None:
        atomic_copy(results_file, out / "results.json")
        written.append("results.json")
    written.append(write_model_card(out, encoder.metadata, measured, name=name).name)
    return src, written
