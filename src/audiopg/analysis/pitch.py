"""A YIN pitch tracker in numpy (de Cheveigné & Kawahara, 2002), and stable voiced segments of recordings.

:func:`yin` follows the paper's four steps (difference function, cumulative mean normalized difference, absolute
threshold, parabolic interpolation); :func:`stable_segments` and :func:`voiced_clips` cut recordings into
stretches of steady pitch, the real clips of the f0 check (docs/analysis.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from audiopg.audio.io import load_audio
from audiopg.core.errors import AudioFileError

__all__ = ["PitchTrack", "yin", "stable_segments", "Segment", "RealClip", "voiced_clips"]


@dataclass
class PitchTrack:
    """Per-frame results of :func:`yin`; frame ``i`` starts at sample ``i * hop``."""

    f0: np.ndarray  # Hz, NaN where unvoiced
    aperiodicity: np.ndarray  # d' at the chosen lag (0 = perfectly periodic)
    voiced: np.ndarray  # bool
    rms_db: np.ndarray  # frame RMS in dB relative to the loudest frame
    hop: int  # samples between frames
    frame_length: int  # samples in one frame's analysis window (W)
    sample_rate: int

    @property
    def times(self) -> np.ndarray:
        """Centre of each frame's analysis window, in seconds."""
        return (np.arange(len(self.f0)) * self.hop + self.frame_length / 2) / self.sample_rate


def _frames(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    n = 1 + max(0, (len(x) - length) // hop)
    idx = np.arange(length)[None, :] + hop * np.arange(n)[:, None]
    return x[idx]


def difference_function(frames: np.ndarray, window: int, tau_max: int) -> np.ndarray:
    """YIN step 1 for a batch of frames ``(n, window + tau_max)`` -> ``d`` of shape ``(n, tau_max + 1)``.

    ``d(tau) = E(0..W) + E(tau..tau+W) - 2 r(tau)`` with ``r(tau) = sum_{j<W} x_j x_{j+tau}``.
    """
    n, length = frames.shape
    if length < window + tau_max:
        raise ValueError(f"frames of {length} samples are shorter than window + tau_max = {window + tau_max}")
    frames = frames[:, : window + tau_max]
    size = 1 << int(np.ceil(np.log2(window + tau_max + window)))
    spec_full = np.fft.rfft(frames, n=size)
    spec_head = np.fft.rfft(frames[:, :window], n=size)
    corr = np.fft.irfft(spec_full * np.conj(spec_head), n=size)[:, : tau_max + 1]  # r(tau)
    sq = np.concatenate([np.zeros((n, 1)), np.cumsum(frames * frames, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy_lag = sq[:, taus + window] - sq[:, taus]  # sum_{j<W} x_{j+tau}^2
    d = sq[:, window][:, None] + energy_lag - 2.0 * corr
    return np.maximum(d, 0.0)


def cumulative_mean_normalized_difference(d: np.ndarray) -> np.ndarray:
    """YIN step 2: ``d'(tau) = d(tau) * tau / sum_{j=1..tau} d(j)``, ``d'(0) = 1``."""
    out = np.ones_like(d)
    csum = np.cumsum(d[:, 1:], axis=1)
    taus = np.arange(1, d.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = d[:, 1:] * taus / csum
    out[:, 1:] = np.where(csum > 0, ratio, 1.0)
    return out


def _pick_lags(dn: np.ndarray, tau_min: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """YIN step 3: per frame the chosen integer lag and whether it passed the threshold."""
    n, T = dn.shape
    region = dn[:, tau_min:]
    below = region < threshold
    has = below.any(axis=1)
    first = np.argmax(below, axis=1)  # first index below the threshold (0 if none)
    lags = np.empty(n, dtype=np.int64)
    for i in range(n):  # walk down to the local minimum after the first dip (a few steps)
        if has[i]:
            k = first[i]
            while k + 1 < region.shape[1] and region[i, k + 1] < region[i, k]:
                k += 1
        else:
            k = int(np.argmin(region[i]))
        lags[i] = k + tau_min
    return lags, has


def _parabolic(dn: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """YIN step 4: vertex of the parabola through ``d'`` at lag-1, lag, lag+1."""
    n, T = dn.shape
    rows = np.arange(n)
    left = np.clip(lags - 1, 0, T - 1)
    right = np.clip(lags + 1, 0, T - 1)
    a, b, c = dn[rows, left], dn[rows, lags], dn[rows, right]
    den = a - 2 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where((den > 0) & (lags > 0) & (lags < T - 1), 0.5 * (a - c) / den, 0.0)
    return lags + np.clip(shift, -1.0, 1.0)


def yin(
    x: np.ndarray,
    sample_rate: int,
    *,
    fmin: float = 50.0,
    fmax: float = 1000.0,
    frame_seconds: float | None = None,
    hop_seconds: float = 0.01,
    threshold: float = 0.15,
    energy_db: float = -40.0,
) -> PitchTrack:
    """Track the pitch of a mono signal ``x`` with YIN.

    A frame is *voiced* when ``d'`` at its lag is below ``threshold`` and its RMS is within ``energy_db`` of the
    loudest frame of the signal.

    ``frame_seconds`` is the integration window W (default: two periods of
    ``fmin``, at least 25 ms); each frame reads ``W + sr / fmin`` samples.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {x.shape}")
    if not 0 < fmin < fmax < sample_rate / 2:
        raise ValueError(f"need 0 < fmin < fmax < Nyquist, got fmin={fmin}, fmax={fmax}, sr={sample_rate}")
    tau_min = max(2, int(np.floor(sample_rate / fmax)))
    tau_max = int(np.ceil(sample_rate / fmin))
    window = int(round((frame_seconds if frame_seconds is not None else max(0.025, 2.0 / fmin)) * sample_rate))
    window = max(window, tau_max)
    hop = max(1, int(round(hop_seconds * sample_rate)))
    length = window + tau_max
    if len(x) < length:
        x = np.pad(x, (0, length - len(x)))
    frames = _frames(x, length, hop)
    d = difference_function(frames, window, tau_max)
    dn = cumulative_mean_normalized_difference(d)
    lags, has = _pick_lags(dn, tau_min, threshold)
    tau = _parabolic(dn, lags)
    f0 = sample_rate / tau
    aper = dn[np.arange(len(lags)), lags]
    power = np.mean(frames[:, :window] ** 2, axis=1)
    rms_db = 10 * np.log10(np.maximum(power, 1e-20) / max(power.max(), 1e-20))
    voiced = has & (rms_db > energy_db) & (f0 >= fmin) & (f0 <= fmax)
    return PitchTrack(
        f0=np.where(voiced, f0, np.nan), aperiodicity=aper, voiced=voiced, rms_db=rms_db,
        hop=hop, frame_length=window, sample_rate=sample_rate,
    )


@dataclass
class Segment:
    start: int  # first sample
    stop: int  # one past the last sample
    f0: float  # median pitch of its frames, Hz
    spread_semitones: float  # largest deviation of a frame's pitch from the median


def stable_segments(
    track: PitchTrack,
    num_samples: int,
    *,
    seconds: float = 0.5,
    min_seconds: float | None = None,
    max_semitones: float = 1.0,
) -> list[Segment]:
    """Non-overlapping stretches of voiced frames with stable pitch.

    Runs of consecutive voiced frames are scanned left to right; a segment is
    the longest stretch (up to ``seconds``) starting at the current frame in
    which every frame's pitch lies within ``max_semitones`` of the stretch's
    median.  Stretches shorter than ``min_seconds`` (default ``seconds``) are
    skipped.  Sample bounds cover the frames' analysis windows, cut to the
    signal.
    """
    min_seconds = seconds if min_seconds is None else min_seconds
    sr, hop, win = track.sample_rate, track.hop, track.frame_length
    max_frames = max(1, int(np.floor((seconds * sr - win) / hop + 1e-9)) + 1)
    min_frames = max(1, int(np.ceil((min_seconds * sr - win) / hop)) + 1)
    semis = 12 * np.log2(track.f0)
    out: list[Segment] = []
    i, n = 0, len(semis)
    while i < n:
        if not track.voiced[i]:
            i += 1
            continue
        j = i
        best = i
        while j < n and track.voiced[j] and j - i < max_frames:
            seg = semis[i : j + 1]
            if np.max(np.abs(seg - np.median(seg))) > max_semitones:
                break
            best = j
            j += 1
        count = best - i + 1
        if count >= min_frames:
            seg = semis[i : best + 1]
            med = float(np.median(seg))
            start = i * hop
            stop = min(num_samples, best * hop + win)
            out.append(Segment(start, stop, float(2 ** (med / 12)), float(np.max(np.abs(seg - med)))))
            i = best + 1
        else:
            i += 1
    return out


@dataclass
class RealClip:
    """A stable voiced segment cut from a recording."""

    path: str
    audio: np.ndarray  # float32 samples at ``sample_rate``
    sample_rate: int
    f0: float  # median YIN pitch, Hz
    spread_semitones: float
    start_seconds: float


def voiced_clips(
    files: Iterable,
    sample_rate: int = 16000,
    *,
    seconds: float = 0.5,
    min_seconds: float = 0.2,
    max_semitones: float = 1.0,
    fmin: float = 60.0,
    fmax: float = 500.0,
    threshold: float = 0.15,
    loader: Callable = load_audio,
) -> tuple[list[RealClip], dict[str, int]]:
    """From each file its longest stable voiced segment (see :func:`stable_segments`), up to ``seconds``.

    ``loader(path, sample_rate) -> 1-D float array``.  Returns the clips and counts (files read, unreadable,
    without a segment).
    """
    clips: list[RealClip] = []
    counts = {"files": 0, "unreadable": 0, "no_segment": 0}
    for path in files:
        counts["files"] += 1
        try:
            x = np.asarray(loader(path, sample_rate), dtype=np.float64)
        except (AudioFileError, OSError, RuntimeError, ValueError):
            counts["unreadable"] += 1
            continue
        track = yin(x, sample_rate, fmin=fmin, fmax=fmax, threshold=threshold)
        segs = stable_segments(track, len(x), seconds=seconds, min_seconds=min_seconds, max_semitones=max_semitones)
        if not segs:
            counts["no_segment"] += 1
            continue
        best = max(segs, key=lambda s: (s.stop - s.start, -s.spread_semitones))
        clips.append(RealClip(str(path), x[best.start:best.stop].astype(np.float32), sample_rate, best.f0,
                              best.spread_semitones, best.start / sample_rate))
    return clips, counts
