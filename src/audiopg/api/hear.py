"""The HEAR 2021 common API for AudioPG encoders.

docs/encoder.md ("The HEAR 2021 interface") has the details; docs/suites.md runs the official validator.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from audiopg.core.errors import CheckpointError
from audiopg.model.encoder import Encoder

__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings"]


class HearModel(nn.Module):
    """An :class:`~audiopg.Encoder` with the attributes and settings the HEAR API needs."""

    def __init__(self, encoder: Encoder, *, layer: int | str | None = None, pool: str | None = None,
                 batch_size: int = 32, timestamp_hop_ms: float = 50.0):
        super().__init__()
        layer, pool = encoder.resolve_layer_pool(layer, pool)  # None: the encoder's default
        if layer == "all":
            raise ValueError("the HEAR API needs one vector per clip: a single layer (an int) or 'concat', not 'all'")
        self.encoder = encoder
        self.layer = layer
        self.pool = pool
        self.batch_size = int(batch_size)
        self.timestamp_hop_ms = float(timestamp_hop_ms)
        self.sample_rate = int(encoder.sample_rate)
        self.scene_embedding_size = encoder.embedding_size_for(layer, pool)
        self.timestamp_embedding_size = encoder.embedding_size_for(layer, "mean")  # column means of the layer(s)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, pool={self.pool!r}, sample_rate={self.sample_rate}"


def load_model(model_file_path: str | os.PathLike = "", **kwargs: Any) -> HearModel:
    """Load an AudioPG encoder for HEAR: ``model_file_path`` is a run folder, a model folder or ``encoder.safetensors``.

    Keyword arguments: ``device`` (default "cpu"; "auto" picks CUDA when
    available), ``layer`` and ``pool`` (default: the model's, see
    ``Encoder.default_layer``/``default_pool``), ``batch_size`` (32 windows),
    ``timestamp_hop_ms`` (50), and anything :meth:`Encoder.from_pretrained`
    takes (``reinit``, ``seed``, ``hop_seconds``, ``pad_noise_level``).
    """
    if not model_file_path:
        raise CheckpointError(
            "audiopg.api.hear.load_model needs model_file_path: a run folder, a model folder or an "
            "encoder.safetensors file (AudioPG ships no default weights)"
        )
    hear_keys = ("layer", "pool", "batch_size", "timestamp_hop_ms")
    hear_kwargs = {k: kwargs.pop(k) for k in hear_keys if k in kwargs}
    device = kwargs.pop("device", "cpu")
    encoder = Encoder.from_pretrained(model_file_path, device=device, **kwargs)
    return HearModel(encoder, **hear_kwargs)


def _check_audio(audio: Any, model: HearModel) -> torch.Tensor:
    if not isinstance(model, HearModel):
        raise TypeError(f"model must come from audiopg.api.hear.load_model, got {type(model).__name__}")
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor of shape (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.dim() != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"audio must have shape (n_sounds, n_samples) with both > 0, got {tuple(audio.shape)}")
    return audio


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """``(n_sounds, n_samples)`` audio at ``model.sample_rate`` -> ``(n_sounds, model.scene_embedding_size)`` float32."""
    audio = _check_audio(audio, model)
    out = model.encoder.embed(audio, model.sample_rate, layer=model.layer, pool=model.pool,
                              batch_size=model.batch_size)
    return out.scene.to(device=audio.device, dtype=torch.float32)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n_sounds, n_samples)`` -> embeddings ``(n_sounds, n_timestamps, D)`` and timestamps ``(n_sounds, n_timestamps)`` in ms.

    One embedding every 40 ms (at most ``model.timestamp_hop_ms``), centred on
    what it describes: the first at 7.5 ms, then every 40 ms up to the end of the
    clip (docs/encoder.md, "Time-stamped embeddings").
    """
    audio = _check_audio(audio, model)
    frames, stamps = model.encoder.embed_timestamps(audio, model.sample_rate, layer=model.layer,
                                                    batch_size=model.batch_size,
                                                    timestamp_hop_ms=model.timestamp_hop_ms)
    return frames.to(device=audio.device, dtype=torch.float32), stamps.to(device=audio.device, dtype=torch.float32)
