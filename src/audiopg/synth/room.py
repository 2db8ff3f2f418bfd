"""The synthetic room (a diffuse reverberant tail) and the air between a source and the microphone.

Both are applied in ``audiopg.synth.render``; ``schroeder_rt60`` measures a reverberation time back (docs/world.md).
"""
from __future__ import annotations

import math

import torch

from audiopg.synth.registry import DB60
from audiopg.synth.rng import Randomness


def fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (fast FFT lengths)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def room_impulse_response(rt60: torch.Tensor, length: int, sample_rate: int, rng: Randomness) -> torch.Tensor:
    """Reverberant tails (m, length) of unit energy: Gaussian noise times exp(-ln(1000) t / rt60).

    The noise is drawn for every row (the random stream does not depend on the values);
    rows whose ``rt60`` is NaN (no room) are zero."""
    m = rt60.shape[0]
    noise = rng.normal((m, length))
    t = torch.arange(length, device=rt60.device, dtype=torch.float32) / sample_rate
    rate = (DB60 / rt60.nan_to_num(1.0))[:, None]
    ir = noise * torch.exp(-rate * t)
    ir = ir / torch.linalg.vector_norm(ir, dim=1, keepdim=True).clamp_min(1e-12)
    return ir * (~torch.isnan(rt60))[:, None]


def air_absorption_response(distance: torch.Tensor, n_fft: int, sample_rate: int,
                            db_per_m_at_8k: float) -> torch.Tensor:
    """Gain (m, n_fft // 2 + 1) of ``distance`` metres of air: -db_per_m_at_8k * distance * (f / 8 kHz)^2 dB."""
    f = torch.arange(n_fft // 2 + 1, device=distance.device, dtype=torch.float32) * (sample_rate / n_fft)
    db = -db_per_m_at_8k * distance[:, None].float() * (f / 8000.0).square()
    return 10 ** (db / 20)


def schroeder_rt60(x, sample_rate: int, fit_db: tuple[float, float] = (-5.0, -35.0)) -> float:
    """RT60 (s) of an impulse response or a free reverberant decay (1-D array or tensor).

    The energy decay curve EDC(t) = sum of x^2 from t to the end, in dB, gets a least-squares
    line between ``fit_db`` (T30 by default); RT60 is the time that line takes to fall 60 dB."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    energy = torch.flip(torch.cumsum(torch.flip(x * x, [0]), 0), [0])
    edc = 10 * torch.log10(energy / energy[0] + 1e-300)
    hi, lo = fit_db
    sel = (edc <= hi) & (edc >= lo)
    t = torch.arange(len(x), dtype=torch.float64)[sel] / sample_rate
    y = edc[sel]
    if len(t) < 2:
        return math.nan
    slope = float(((t - t.mean()) * (y - y.mean())).sum() / (t - t.mean()).square().sum())
    return -60.0 / slope
