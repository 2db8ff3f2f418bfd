"""The handcrafted baseline: statistics of an 80-bin Kaldi log-mel spectrogram.

Per clip (mono, 16 kHz, as read by :func:`audiopg.audio.io.load_audio`, no
normalization): the Kaldi-compatible log-mel filterbank of
:mod:`audiopg.audio.fbank` with 80 mel bins, 25 ms windows and a 10 ms hop; the
feature vector is the mean over frames of every bin followed by the standard
deviation over frames (160 values).  Standardization (zero mean, unit
variance per dimension, fitted on the training part only) happens in the
probe's pipeline.  Clips shorter than one 25 ms window are padded with the
-80 dBFS noise floor of :func:`audiopg.audio.io.fit_length`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from audiopg.audio.fbank import FbankConfig, fbank
from audiopg.audio.io import fit_length

__all__ = ["HANDCRAFTED_FBANK", "HANDCRAFTED_DIM", "handcrafted_features"]

#: the filterbank of the baseline: 80 mel bins, 16 kHz, Kaldi defaults otherwise
HANDCRAFTED_FBANK = FbankConfig(sample_rate=16000, num_mel_bins=80)
#: length of the feature vector (mean and std of every bin)
HANDCRAFTED_DIM = 2 * HANDCRAFTED_FBANK.num_mel_bins


def handcrafted_features(clips: Sequence[np.ndarray], sample_rate: int = 16000) -> np.ndarray:
    """(N, 160) float32: mean and std over frames of the 80-bin log-mel of each 16 kHz clip."""
    if sample_rate != HANDCRAFTED_FBANK.sample_rate:
        raise ValueError(f"handcrafted features expect {HANDCRAFTED_FBANK.sample_rate} Hz audio, got {sample_rate} Hz")
    out = np.empty((len(clips), HANDCRAFTED_DIM), dtype=np.float32)
    win = HANDCRAFTED_FBANK.window_length
    for i, clip in enumerate(clips):
        x = np.asarray(clip, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"clip {i} must be a non-empty 1-D array, got shape {x.shape}")
        if x.size < win:
            x = fit_length(x, win)
        feats = fbank(torch.from_numpy(np.ascontiguousarray(x)), HANDCRAFTED_FBANK).double()
        out[i, : HANDCRAFTED_FBANK.num_mel_bins] = feats.mean(dim=0).numpy()
        out[i, HANDCRAFTED_FBANK.num_mel_bins:] = feats.std(dim=0, unbiased=False).numpy()
    return out
