"""An X-ARES audio encoder for AudioPG models (the suite at github.com/jimbozhang/xares).

X-ARES builds the one class whose name ends in "Encoder" in a Python file, without arguments, moves it with
``.to(device)`` and calls it on batches of waveforms at its ``sampling_rate``; it needs ``output_dim`` and
``hop_size_in_ms`` and feeds clips of up to 10 minutes.  docs/suites.md shows the file and the commands.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from audiopg.model.encoder import Encoder

__all__ = ["XaresEncoder"]


class XaresEncoder(nn.Module):
    """Frame-level embeddings ``(B, T, output_dim)``, one every ``hop_size_in_ms``, of ``(B, samples)`` audio.

    ``model``: a run folder, a model folder, an ``encoder.safetensors`` file or an :class:`~audiopg.Encoder`.
    The frames are :meth:`Encoder.embed_timestamps` (the HEAR module's time-stamped embeddings): frame ``t`` is
    centred inside ``[t, t + 1) * hop_size_in_ms`` (7.5 ms after the slot's start at 40 ms), the slot X-ARES's
    frame labels give it, and ``T`` is the duration over the hop rounded down or up.
    ``hop_size_in_ms``: at most this, the patch length over ``d`` for a divisor ``d`` of its frames (for 16-frame
    patches 160, 80, 40, 20 or 10 ms); the work grows as ``d``.  ``layer``: an int or "concat" (default: the
    model's).  ``batch_size``: windows per forward pass, which bounds the memory whatever the length of the input.
    """

    def __init__(self, model: str | os.PathLike | Encoder, *, layer: int | str | None = None,
                 hop_size_in_ms: float = 40.0, batch_size: int = 32, device: str | torch.device = "cpu"):
        super().__init__()
        encoder = model if isinstance(model, Encoder) else Encoder.from_pretrained(model, device=device)
        layer, _ = encoder.resolve_layer_pool(layer, "mean")
        if layer == "all":
            raise ValueError("X-ARES needs one vector per frame: a single layer (an int) or 'concat', not 'all'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(hop_size_in_ms, bool) or not isinstance(hop_size_in_ms, (int, float)):
            raise ValueError(f"hop_size_in_ms must be a number of milliseconds, got {hop_size_in_ms!r}")
        try:
            hop = encoder.timestamp_step_ms(float(hop_size_in_ms))
        except ValueError as err:
            raise ValueError(f"hop_size_in_ms: {err}") from None
        self.encoder = encoder
        self.layer = layer
        self.batch_size = batch_size
        self.sampling_rate = int(encoder.sample_rate)
        self.hop_size_in_ms = hop
        self.output_dim = encoder.embedding_size_for(layer, "mean")

    def extra_repr(self) -> str:
        return (f"layer={self.layer!r}, sampling_rate={self.sampling_rate}, "
                f"hop_size_in_ms={self.hop_size_in_ms:g}, output_dim={self.output_dim}")

    def forward(self, audio: Any) -> torch.Tensor:
        """``(B, samples)`` (or ``(samples,)``) float audio at ``sampling_rate`` -> ``(B, T, output_dim)`` float32."""
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor of shape (batch, samples), got {type(audio).__name__}")
        if audio.dim() == 1:
            audio = audio[None]
        if audio.dim() != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
            raise ValueError(f"audio must have shape (batch, samples) with both > 0, got {tuple(audio.shape)}")
        frames, _ = self.encoder.embed_timestamps(audio, self.sampling_rate, layer=self.layer,
                                                  batch_size=self.batch_size, timestamp_hop_ms=self.hop_size_in_ms)
        return frames.to(device=audio.device, dtype=torch.float32)
