"""Encoder checkpoints: safetensors weights with JSON metadata inside the same file.

``encoder.safetensors`` holds the encoder's ``state_dict`` (keys as in
:class:`audiopg.model.ViTEncoder`) and, in the safetensors header, one metadata
entry ``"audiopg"``: a JSON object with at least

* ``format``: :data:`FORMAT_VERSION`;
* ``model``: the :class:`~audiopg.model.ModelConfig` as a dict;
* ``fbank``: the :class:`~audiopg.audio.fbank.FbankConfig` as a dict;
* ``fbank_stats``: ``{"mean": ..., "std": ...}`` measured on the world;
* ``world``: the world config the encoder was trained on (a dict);
* ``embedding`` (optional): ``{"layer": ..., "pool": ...}``, the pooling
  :meth:`audiopg.Encoder.embed` uses when the caller names none (written by
  ``audiopg export --layer/--pool``; docs/encoder.md);
* ``step``, ``git_commit`` and anything else the trainer adds (``train``, ``created``...).

Nothing is unpickled: loading a checkpoint cannot run code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from audiopg.core.errors import CheckpointError
from audiopg.core.io import atomic_write_bytes

FORMAT_VERSION = 1
METADATA_KEY = "audiopg"
REQUIRED_KEYS = ("format", "model", "fbank", "fbank_stats")


def save_encoder(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write weights and metadata atomically (temp file in the same folder, then rename)."""
    metadata = {"format": FORMAT_VERSION, **metadata}
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"encoder metadata lacks {', '.join(missing)}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(path, save(tensors, metadata={METADATA_KEY: json.dumps(metadata)}))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of an encoder file, without loading its weights."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    return _parse_metadata(path, raw)


def load_encoder_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of an encoder file; a clear CheckpointError when it is not one."""
    path = _existing(path)
    meta = read_metadata(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the weights ({err})") from None
    check_finite_weights(state, path)
    return state, meta


def check_finite_weights(state: dict[str, torch.Tensor], where: str | os.PathLike) -> None:
    """Raise CheckpointError naming the first tensor that holds NaN or infinite values."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{where}: tensor {name!r} holds {bad} NaN or infinite value(s) of "
                                  f"{tensor.numel()}; the checkpoint is damaged (training diverged?)")


def resolve_encoder_path(path: str | os.PathLike) -> Path:
    """A run folder, a model folder or the file itself -> the ``encoder.safetensors`` path."""
    path = Path(path)
    if path.is_dir():
        path = path / "encoder.safetensors"
    return _existing(path)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "encoder.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (expected a run folder or an encoder.safetensors file)")
    return path


def _parse_metadata(path: Path, raw: str | None) -> dict[str, Any]:
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without AudioPG metadata (no {METADATA_KEY!r} entry)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({err})") from None
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks {', '.join(missing)}")
    if meta["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['format']} is not supported (expected {FORMAT_VERSION})")
    return meta
