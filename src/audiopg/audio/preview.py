"""What a person hears and sees of a clip on a page: FLAC bytes for a player, a small log-mel PNG, a clip card."""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np
import soundfile as sf
import torch

from audiopg.audio.fbank import Fbank, FbankConfig

__all__ = ["AUDIO_MIME", "sound_bytes", "logmel_pngs", "clip_cards"]

AUDIO_MIME = "audio/flac"  # lossless at 16 bits and about 2/3 the size of a 16-bit WAV; every browser plays it
PNG_SIZE = (4.0, 1.5)  # inches at PNG_DPI: 320 x 120 pixels, about 15 kB per clip
PNG_DPI = 80
PNG_COLOURS = 64


def sound_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    """One clip (samples,) in [-1, 1] as 16-bit FLAC."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0), sample_rate, format="FLAC",
             subtype="PCM_16")
    return buf.getvalue()


def logmel_pngs(audio: torch.Tensor, sample_rate: int, num_mel_bins: int = 128) -> list[bytes]:
    """A small PNG of every clip's log-mel spectrogram (``audio``: (clips, samples)), our own fbank, time in s."""
    # heavy, and only for these pictures
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image  # matplotlib's own dependency

    cfg = FbankConfig(sample_rate=sample_rate, num_mel_bins=num_mel_bins)
    feats = Fbank(cfg).to(audio.device)(audio.float()).cpu().numpy()
    out = []
    for spec in feats:
        fig = Figure(figsize=PNG_SIZE, dpi=PNG_DPI)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0.1, 0.2, 0.88, 0.75))
        ax.imshow(spec.T, origin="lower", aspect="auto", cmap="magma", interpolation="antialiased",
                  extent=(0, spec.shape[0] * cfg.frame_shift_ms / 1000, 0, spec.shape[1]))
        ax.set_xlabel("s", fontsize=6, labelpad=1)
        ax.set_ylabel("mel bin", fontsize=6, labelpad=1)
        ax.tick_params(labelsize=6, length=2, pad=1)
        canvas.draw()
        buf = io.BytesIO()  # a 64-colour palette: a third of the bytes, no visible change
        Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).quantize(PNG_COLOURS).save(buf, format="PNG",
                                                                                               optimize=True)
        out.append(buf.getvalue())
    return out


def clip_cards(audio: torch.Tensor, sample_rate: int, names: Sequence[str],
               factors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The cards of ``Page.clips`` (core/page.py): name, FLAC sound, log-mel PNG and factors of every clip."""
    waves = audio.detach().float().cpu().numpy()
    return [{"name": name, "audio": sound_bytes(wave, sample_rate), "audio_mime": AUDIO_MIME, "spectrogram": png,
             "factors": dict(rec)}
            for name, wave, png, rec in zip(names, waves, logmel_pngs(audio, sample_rate), factors)]
