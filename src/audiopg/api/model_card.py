"""Model cards: a ``README.md`` for an exported model folder, written from the checkpoint's metadata.

The card states what is known about the encoder and nothing else: the
architecture (preset, sizes, parameter count), the world it was trained on
(preset when it matches one, and its key settings), the training budget and
hardware as recorded by the trainer, the log-mel settings and statistics, and
the measured results that are given (or that none are measured yet).  Facts
the metadata does not record are shown as "not recorded", never guessed.

The card opens with the YAML block the Hugging Face Hub reads (:func:`hub_metadata`): library name,
pipeline, licence, tags, the world and objective, the exact features, and the results as a ``model-index``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from audiopg.audio.fbank import FbankConfig
from audiopg.core.config import from_dict, to_dict
from audiopg.core.io import atomic_write_text
from audiopg.model.config import MODEL_PRESETS, ModelConfig
from audiopg.model.encoder import DEFAULT_LAYER, DEFAULT_POOL, embedding_length
from audiopg.model.vit import ViTEncoder
from audiopg.synth.config import list_presets, load_world_config

__all__ = ["model_card_text", "write_model_card", "load_results", "hub_metadata"]

NOT_RECORDED = "not recorded"
LICENSE = "mit"  # the package's licence; the weights saw synthetic sound only, no recordings
TAGS = ("audiopg", "audio", "self-supervised-learning", "masked-autoencoder", "synthetic-data")

# where the trainer may record each training fact: top level first, then these sections
_SECTIONS = ("train", "training", "budget", "run")
_ALIASES = {
    "step": ("step", "optimizer_steps"),
    "clips_seen": ("clips_seen", "samples_seen", "examples_seen"),
    "wall_time_s": ("wall_time_s", "wall_seconds", "wall_time", "elapsed_s", "elapsed_seconds", "train_seconds"),
    "device": ("device", "hardware", "device_name", "gpu"),
    "git_commit": ("git_commit", "commit"),
    "created": ("created", "created_at", "date"),
}


def _lookup(metadata: Mapping[str, Any], fact: str) -> Any:
    names = _ALIASES[fact]
    for name in names:
        if metadata.get(name) is not None:
            return metadata[name]
    for section in _SECTIONS:
        sub = metadata.get(section)
        if isinstance(sub, Mapping):
            for name in names:
                if sub.get(name) is not None:
                    return sub[name]
    return None


def load_results(results: Any) -> dict | None:
    """``None``, a mapping, or a path to a JSON file holding a mapping -> a dict (or None)."""
    if results is None:
        return None
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise ValueError(f"{path}: cannot read the results file ({err.strerror})") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: results file is not valid JSON ({err})") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: results file must hold a JSON object, got {type(data).__name__}")
        return dict(data)
    if isinstance(results, Mapping):
        return dict(results)
    raise TypeError(f"results must be a mapping, a JSON file path or None, got {type(results).__name__}")


# ----------------------------------------------------------------------------- formatting helpers
def _fmt(value: Any) -> str:
    if value is None:
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return _fmt(seconds)
    s = float(seconds)
    h, rest = divmod(s, 3600)
    m = rest / 60
    text = f"{int(h)} h {m:.0f} min" if h >= 1 else (f"{m:.1f} min" if s >= 60 else f"{s:.1f} s")
    return f"{text} ({s:,.0f} s)"


def _table(rows: list[tuple[str, str]], header: tuple[str, str] = ("", "")) -> list[str]:
    out = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flatten(value, name + " / ")
        else:
            rows.append((name, value))
    return rows


# ----------------------------------------------------------------------------- facts from metadata
def _model_facts(model: Mapping[str, Any]) -> tuple[str, int | None]:
    """(preset name or 'custom', encoder parameter count or None)."""

    preset = "custom"
    for name, cfg in MODEL_PRESETS.items():
        ref = to_dict(cfg)
        keys = ("num_frames", "num_mel_bins", "patch_size", "patch_frames", "embed_dim", "depth", "num_heads",
                "mlp_ratio")
        if all(model.get(k) == ref[k] for k in keys):
            preset = name
            break
        if all(model.get(k) == ref[k] for k in keys if k != "num_frames"):
            preset = f"{name} (windows of {model.get('num_frames')} frames)"
            break
    try:
        config = from_dict(ModelConfig, model)
        with torch.device("meta"):
            params = sum(p.numel() for p in ViTEncoder(config).parameters())
    except Exception:  # a card must still be written for an unusual config
        params = None
    return preset, params


def _objective(meta: Mapping[str, Any]) -> str:
    """The run's objective and masks per clip; runs from before objectives existed trained plain ``mae``."""
    train = meta.get("train")
    if not isinstance(train, Mapping):
        return NOT_RECORDED
    masks = train.get("masks_per_clip", 1)
    return f"{train.get('objective', 'mae')}" + (f", {masks} masks per clip" if masks != 1 else "")


def _embedding(meta: Mapping[str, Any]) -> str:
    """What ``Encoder.embed`` returns when no layer or pooling is asked for."""
    chosen = meta.get("embedding") if isinstance(meta.get("embedding"), Mapping) else {}
    layer, pool = chosen.get("layer", DEFAULT_LAYER), chosen.get("pool", DEFAULT_POOL)
    where = "the final output" if layer == -1 else ("every block, concatenated" if layer == "concat" else f"block {layer}")
    text = f"{where}, {pool} pooling" + ("" if chosen else " (the library default)")
    model = meta.get("model") if isinstance(meta.get("model"), Mapping) else {}
    width, depth = model.get("embed_dim"), model.get("depth")
    if isinstance(width, int) and isinstance(depth, int):
        text += f": {embedding_length(width, depth, layer, pool):,} values per clip"
    return text


def _high_freq(fbank: Mapping[str, Any]) -> str:
    """The upper mel edge in Hz, resolving Kaldi's "<= 0 is an offset from Nyquist" convention."""
    try:
        high = float(from_dict(FbankConfig, fbank).effective_high_freq)
        return _fmt(int(high) if high.is_integer() else high)
    except Exception:
        return _fmt(fbank.get("high_freq"))


def _world_preset(world: Mapping[str, Any]) -> str:
    """The built-in preset the world is, or is but for its clip length (stated then), else 'custom'."""
    try:
        for name in list_presets():
            ref = load_world_config(name).to_dict()
            if ref == dict(world):
                return name
            if {**ref, "seconds": world.get("seconds")} == dict(world):
                return f"{name} (clips of {_fmt(world.get('seconds'))} s)"
    except Exception:  # a card must still be written for an unusual config
        pass
    return "custom (matches no built-in preset)"


def _world_rows(world: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = [("preset", _world_preset(world))]
    rows.append(("sample rate", f"{_fmt(world.get('sample_rate'))} Hz"))
    rows.append(("clip length", f"{_fmt(world.get('seconds'))} s"))
    sources = world.get("sources")
    if isinstance(sources, Mapping):
        parts = []
        for name, cfg in sources.items():
            weight = cfg.get("weight") if isinstance(cfg, Mapping) else None
            enabled = cfg.get("enabled", True) if isinstance(cfg, Mapping) else True
            parts.append(f"{name} (weight {_fmt(weight)}{'' if enabled else ', disabled'})")
        rows.append(("sources", ", ".join(parts) or "none"))
    events = world.get("events")
    if isinstance(events, Mapping):
        rows.append(("events per clip", _fmt(events.get("count"))))
        rows.append(("event level", f"{_fmt(events.get('level_db'))} dB"))
    for key, label, fields in (
        ("transient", "onset transients", ("probability", "seconds", "level")),
        ("lowpass", "low-pass filter (cutoff in Hz)", ("probability", "cutoff")),
        ("background", "background noise (std)", ("level",)),
    ):
        sec = world.get(key)
        if isinstance(sec, Mapping):
            if sec.get("enabled", True) is False:
                rows.append((label, "off"))
            else:
                rows.append((label, ", ".join(f"{f} {_fmt(sec.get(f))}" for f in fields if f in sec)))
    rows.append(("peak normalization", _fmt(world.get("peak_normalize"))))
    return rows


# ----------------------------------------------------------------------------- Hub metadata
def hub_metadata(metadata: Mapping[str, Any], results: Any = None, *, name: str | None = None) -> dict[str, Any]:
    """The card's YAML front matter: what the Hugging Face Hub indexes (library, pipeline, licence, tags,
    ``model-index``) plus an ``audiopg`` entry with the world, objective and exact log-mel settings."""
    world = metadata.get("world") if isinstance(metadata.get("world"), Mapping) else None
    train = metadata.get("train") if isinstance(metadata.get("train"), Mapping) else {}
    world_name = NOT_RECORDED if world is None else _world_preset(world).split(" ")[0]
    objective = train.get("objective", "mae") if train else NOT_RECORDED
    meta: dict[str, Any] = {
        "library_name": "audiopg",
        "pipeline_tag": "feature-extraction",
        "license": LICENSE,
        "tags": [*TAGS, f"world-{world_name}".replace(" ", "-"), f"objective-{objective}".replace(" ", "-")],
        "audiopg": {
            "world": world_name,
            "objective": objective,
            "masks_per_clip": train.get("masks_per_clip", 1) if train else NOT_RECORDED,
            "fbank": {k: v for k, v in (metadata.get("fbank") or {}).items() if k != "target_frames"},
            "fbank_stats": dict(metadata.get("fbank_stats") or {}),
            "normalization": "(logmel - mean) / (2 * std)",
        },
    }
    measured = load_results(results)
    index = []
    for task, values in (measured or {}).items():
        rows = _flatten(values) if isinstance(values, Mapping) else [("value", values)]
        metrics = [{"type": metric.replace(" / ", "_"), "name": metric, "value": value} for metric, value in rows
                   if isinstance(value, (int, float)) and not isinstance(value, bool)]
        if metrics:
            index.append({"task": {"type": "audio-classification", "name": str(task)},
                          "dataset": {"name": str(task), "type": str(task)}, "metrics": metrics})
    if index:
        meta["model-index"] = [{"name": name or f"AudioPG encoder ({_model_facts(metadata.get('model') or {})[0].split(' (')[0]} ViT)",
                                "results": index}]
    return meta


# ----------------------------------------------------------------------------- the card
def model_card_text(metadata: Mapping[str, Any], results: Any = None, *, name: str | None = None,
                    repo_id: str | None = None) -> str:
    """The Markdown model card for an encoder with checkpoint ``metadata`` and optional ``results``
    (``repo_id``: its Hugging Face Hub repository, for the usage lines)."""
    meta = dict(metadata)
    model = meta.get("model") if isinstance(meta.get("model"), Mapping) else {}
    fbank = meta.get("fbank") if isinstance(meta.get("fbank"), Mapping) else {}
    stats = meta.get("fbank_stats") if isinstance(meta.get("fbank_stats"), Mapping) else {}
    world = meta.get("world") if isinstance(meta.get("world"), Mapping) else None
    res = load_results(results)
    preset, params = _model_facts(model)
    shift_ms = fbank.get("frame_shift_ms", 10.0)
    frames = model.get("num_frames")
    window_s = frames * shift_ms / 1000.0 if isinstance(frames, int) and isinstance(shift_ms, (int, float)) else None
    patch = model.get("patch_size")
    patch_frames = model.get("patch_frames") or patch  # absent or null in square-patch models
    title = name or f"AudioPG encoder ({preset.split(' (')[0]} ViT)"

    front = yaml.safe_dump(hub_metadata(meta, res, name=title), sort_keys=False, allow_unicode=True)
    lines = ["---", front.rstrip("\n"), "---", "", f"# {title}", ""]
    lines.append(
        "An AudioMAE-style ViT audio encoder pre-trained with AudioPG by masked-spectrogram modelling on a "
        "procedural sound world (synthetic sounds only, no recordings). This card is generated from the "
        "checkpoint's metadata."
    )
    source = repo_id or "path/to/this/folder"
    hint = "   # pip install audiopg[hub]" if repo_id else ""
    lines += ["", "## Usage", "", "```python", "import audiopg", "",
              f'enc = audiopg.Encoder.from_pretrained("{source}"){hint}',
              "emb = enc.embed(waveforms, sample_rate=16000).scene   # (clips, embedding size)",
              "```", "",
              f"Or from the shell: `audiopg embed AUDIO_FOLDER --checkpoint {source} --out embeddings`. "
              f"HEAR 2021 API: `audiopg.api.hear.load_model(\"{source}\")`.", ""]

    lines += ["## Architecture", ""]
    arch = [
        ("preset", preset),
        ("parameters (encoder)", f"{params:,} ({params / 1e6:.2f} M)" if params else NOT_RECORDED),
        ("token width", _fmt(model.get("embed_dim"))),
        ("depth (blocks)", _fmt(model.get("depth"))),
        ("attention heads", _fmt(model.get("num_heads"))),
        ("MLP ratio", _fmt(model.get("mlp_ratio"))),
        ("patch", f"{_fmt(patch_frames)} x {_fmt(patch)} (frames x mel bins)"),
        ("input window", f"{_fmt(frames)} frames x {_fmt(model.get('num_mel_bins'))} mel bins"
         + (f" ({window_s:g} s)" if window_s is not None else "")),
        ("pre-training objective", _objective(meta)),
        ("pre-training mask ratio", _fmt(model.get("mask_ratio"))),
        ("default embedding", _embedding(meta)),
        ("decoder (discarded)", f"{_fmt(model.get('decoder_depth'))} blocks of width {_fmt(model.get('decoder_embed_dim'))}"),
    ]
    lines += _table(arch, ("setting", "value")) + [""]

    lines += ["## Pre-training world", ""]
    if world is None:
        lines += [f"World settings: {NOT_RECORDED}.", ""]
    else:
        lines += _table(_world_rows(world), ("setting", "value")) + [""]

    lines += ["## Training budget and hardware", ""]
    budget = [
        ("optimizer steps", _fmt(_lookup(meta, "step"))),
        ("clips seen", _fmt(_lookup(meta, "clips_seen"))),
        ("wall time", _duration(_lookup(meta, "wall_time_s"))),
        ("device", _fmt(_lookup(meta, "device"))),
        ("git commit", _fmt(_lookup(meta, "git_commit"))),
        ("created", _fmt(_lookup(meta, "created"))),
    ]
    lines += _table(budget, ("fact", "value")) + [""]
    train = next((meta[s] for s in _SECTIONS if isinstance(meta.get(s), Mapping)), None)
    if train:
        lines += ["Training settings as recorded:", "", "```json", json.dumps(train, indent=2, sort_keys=True, default=str), "```", ""]

    lines += ["## Input features", ""]
    feats = [
        ("sample rate", f"{_fmt(fbank.get('sample_rate'))} Hz"),
        ("mel bins", _fmt(fbank.get("num_mel_bins"))),
        ("frame length / shift", f"{_fmt(fbank.get('frame_length_ms'))} ms / {_fmt(fbank.get('frame_shift_ms'))} ms"),
        ("pre-emphasis", _fmt(fbank.get("preemphasis"))),
        ("frequency range", f"{_fmt(fbank.get('low_freq'))} Hz to {_high_freq(fbank)} Hz"),
        ("statistics: mean", _fmt(stats.get("mean"))),
        ("statistics: std", _fmt(stats.get("std"))),
    ]
    lines += _table(feats, ("setting", "value")) + [""]
    lines.append(
        "Kaldi-compatible log-mel filterbank on waveforms in [-1, 1] (not int16 scale), normalized as "
        "`(x - mean) / (2 * std)` with the statistics above, measured on the synthetic world. "
        "`audiopg.Encoder` applies all of this (and resampling and peak normalization) itself."
    )
    lines.append("")

    lines += ["## Results", ""]
    if res:
        lines += _table([(k, _fmt(v)) for k, v in _flatten(res)], ("measure", "value")) + [""]
    else:
        lines += ["No results measured yet.", ""]

    lines += ["## Files", "", "- `encoder.safetensors`: encoder weights with this metadata in the header "
              "(no pickles; loading cannot run code).",
              "- `config.json`: the run's configuration, when the run had one.",
              "- `results.json`: the results above, when there are any.",
              "- `*.onnx`: the encoder as an ONNX graph (log-mel in, embedding out), when exported with `--onnx`.",
              ""]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike, metadata: Mapping[str, Any], results: Any = None, *,
                     name: str | None = None, repo_id: str | None = None) -> Path:
    """Write ``folder/README.md`` (atomically) and return its path; ``results`` is a mapping, a JSON path or None."""
    path = Path(folder) / "README.md"
    atomic_write_text(path, model_card_text(metadata, results, name=name, repo_id=repo_id))
    return path
