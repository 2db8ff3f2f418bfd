"""Per-clip NumPy/SciPy reference synthesizer: the BASELINE of the throughput benchmark.

This re-implements, one clip at a time, the procedural sound world of "From Physics
to Representation: Audio Learning with Synthetic Pre-training via Procedural
Generation" (ICMR 2026).  `audiopg` synthesizes whole batches with torch tensor ops;
this file is the one-clip-at-a-time NumPy way of doing the same, timed against it.

Published code: github.com/Freyliu0516/audioPG (commit 8ed5758). Training goes
pretrain.py -> synthesizer/world_model.py (PhysicsBasedDataset.__getitem__ ->
WorldModelSynthesizer.generate_complete_sample) -> synthesizer/primitives.py
(create_dynamic_audio_segment) + synthesizer/modifiers.py
(apply_full_postprocessing_chain). Its structure is mirrored here:
float64 `t = arange(n) / sr` over the whole clip; the source is synthesized for the
full clip (a Python loop of full-length `np.sin` calls for additive sources); each
event slices a random window of it, multiplies by an `np.linspace`-built envelope and
adds it into a zero buffer at a random onset; then one biquad low-pass, additive
uniform background noise and peak normalization. Everything runs in a Python loop
over clips (the published DataLoader runs 4 such loops in workers).

The distribution follows the paper's spec where the published training path
differs (for the benchmark, both sides must synthesize the same world):
- sources: the published path picks from {harmonic, fm, pulse} only; a pink-noise
  source exists only in the unused `generate_single_event`. Here: plus noise
  (white / pink via FFT 1/sqrt(f) / brown via cumsum).
- pulses: published uses naive sawtooth / `sign(sin)` square; here band-limited
  additive saw / square / triangle (loop over harmonics below Nyquist).
- harmonic: published never drops partials above Nyquist; here they are dropped.
  gamma and the gain are drawn per partial, as in the published loop.
- transient: published adds one non-decaying uniform burst (x U(0.5, 2)) at a random
  place in the source before events are cut; here, with p = 0.6 per event, an
  exponentially decaying burst of 10-100 ms at the event onset.
- ADSR: published has a fixed 0.6 sustain and ramps linearly to 0 over the rest;
  here sustain U(0.3, 0.9), a sustain plateau, and a release of 10-30 %; plus an
  event gain U(0.3, 1.0) (published: none).
- low-pass: published uses torchaudio `lowpass_biquad` (Q = 1/sqrt(2)); here
  `scipy.signal.butter(2)` + `lfilter`, which is the same 2nd-order Butterworth.
- RNG: published uses Python `random` plus the global `np.random`; here one
  `np.random.Generator` per call, for reproducibility.
Guesses (neither source says): noise sources and bursts are peak-normalized before
scaling, the burst amplitude is U(0.5, 2.0) x event gain, the decay constant is a
fifth of the burst length, and brown noise has its mean removed.
The published per-clip log-mel (Kaldi fbank) step is not part of this baseline.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import signal

MOD_RATIOS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.14)


def _harmonic(rng, f0, t, sr):
    out = np.zeros_like(t)
    for k in range(1, int(rng.integers(3, 16)) + 1):
        amp = k ** -rng.uniform(0.5, 1.5) * rng.uniform(0.5, 1.2)
        phase = rng.uniform(0, 2 * np.pi)
        freq = f0 * k * rng.uniform(0.995, 1.005)
        if freq >= sr / 2:
            continue
        out += amp * np.sin(2 * np.pi * freq * t + phase)
    return out


def _fm(rng, f0, t):
    beta = rng.uniform(0.5, 8.0)
    fm = f0 * MOD_RATIOS[rng.integers(len(MOD_RATIOS))]
    return np.sin(2 * np.pi * f0 * t + beta * np.sin(2 * np.pi * fm * t))


def _pulse(rng, f0, t, sr):
    kind = ("sawtooth", "square", "triangle")[rng.integers(3)]
    out = np.zeros_like(t)
    k = 1
    while k * f0 < sr / 2:
        if kind == "sawtooth":
            out += (2 / np.pi) * (-1) ** (k + 1) / k * np.sin(2 * np.pi * k * f0 * t)
            k += 1
        elif kind == "square":
            out += (4 / np.pi) / k * np.sin(2 * np.pi * k * f0 * t)
            k += 2
        else:
            out += (8 / np.pi**2) * (-1) ** ((k - 1) // 2) / k**2 * np.sin(2 * np.pi * k * f0 * t)
            k += 2
    return out


def _noise(rng, n):
    kind = ("white", "pink", "brown")[rng.integers(3)]
    white = rng.standard_normal(n)
    if kind == "white":
        out = white
    elif kind == "pink":
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n)
        f[0] = f[1]  # avoid dividing by zero at DC
        out = np.fft.irfft(spec / np.sqrt(f), n)
    else:
        out = np.cumsum(white)
        out -= out.mean()
    return out / np.max(np.abs(out))


def _adsr(rng, n):
    a = int(n * rng.uniform(0.01, 0.3))
    d = int(n * rng.uniform(0.1, 0.4))
    r = int(n * rng.uniform(0.1, 0.3))
    s_level = rng.uniform(0.3, 0.9)
    s = max(0, n - a - d - r)
    env = np.empty(n)
    env[:a] = np.linspace(0, 1, a)
    env[a:a + d] = np.linspace(1, s_level, d)
    env[a + d:a + d + s] = s_level
    env[a + d + s:] = np.linspace(s_level, 0, n - a - d - s)
    return env


def synthesize_clip(rng: np.random.Generator, seconds: float = 10.24,
                    sample_rate: int = 16000) -> np.ndarray:
    """One clip (float32, 1-D, peak 1.0) from the procedural world."""
    sr = sample_rate
    n = int(round(seconds * sr))
    t = np.arange(n) / sr

    # 1. Source, synthesized for the whole clip.
    f0 = rng.uniform(50.0, 2000.0)
    mode = ("harmonic", "fm", "pulse", "noise")[rng.integers(4)]
    if mode == "harmonic":
        source = _harmonic(rng, f0, t, sr)
    elif mode == "fm":
        source = _fm(rng, f0, t)
    elif mode == "pulse":
        source = _pulse(rng, f0, t, sr)
    else:
        source = _noise(rng, n)

    # 2. Events: cut a window of the source, envelope it, place it at a random onset.
    out = np.zeros(n)
    num_events = int(rng.integers(1, 6))
    for _ in range(num_events):
        ev_len = min(int(rng.uniform(0.5, seconds / num_events) * sr), n)
        start = int(rng.integers(0, n - ev_len + 1))
        place = int(rng.integers(0, n - ev_len + 1))
        gain = rng.uniform(0.3, 1.0)
        out[place:place + ev_len] += gain * source[start:start + ev_len] * _adsr(rng, ev_len)
        if rng.random() < 0.6:  # transient burst at the event onset
            b_len = min(int(rng.uniform(0.01, 0.1) * sr), n - place)
            burst = rng.uniform(-1, 1, b_len) * np.exp(-np.arange(b_len) / (0.2 * b_len))
            out[place:place + b_len] += gain * rng.uniform(0.5, 2.0) * burst

    # 3. Post-processing: low-pass (p = 0.7), background noise, peak normalization.
    if rng.random() < 0.7:
        b, a = signal.butter(2, rng.uniform(200.0, 6000.0), btype="low", fs=sr)
        out = signal.lfilter(b, a, out)
    out += rng.uniform(-1, 1, n) * rng.uniform(0.001, 0.02)
    out /= np.max(np.abs(out))
    return out.astype(np.float32)


def synthesize_batch_loop(n: int, seed: int, seconds: float = 10.24,
                          sample_rate: int = 16000) -> np.ndarray:
    """The per-clip loop: `n` clips from one seeded Generator, stacked to (n, samples)."""
    rng = np.random.default_rng(seed)
    return np.stack([synthesize_clip(rng, seconds, sample_rate) for _ in range(n)])


if __name__ == "__main__":
    # Single-threaded timing (set OMP/MKL/OPENBLAS_NUM_THREADS=1 to be strict;
    # the calls used here are single-threaded in NumPy/SciPy anyway).
    synthesize_batch_loop(2, seed=0)  # warm-up
    n_clips = 50
    t0 = time.perf_counter()
    x = synthesize_batch_loop(n_clips, seed=1)
    dt = time.perf_counter() - t0
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0
    print(f"{n_clips} clips of 10.24 s @ 16 kHz, shape {x.shape}: "
          f"{1000 * dt / n_clips:.1f} ms/clip")
