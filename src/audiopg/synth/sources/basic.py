"""The paper's four source types: harmonic tones, FM tones, band-limited pulses and coloured noise.

Tones are sums of partials on the clip's FFT grid, so they are periodic over the clip (docs/world.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from audiopg.core.config import check_interval, check_range
from audiopg.core.errors import ConfigError
from audiopg.synth.registry import (
    Partials,
    Source,
    check_choices,
    check_common,
    check_f0,
    quantize_frequency,
)

F0_RANGE: tuple[float, float] = (50.0, 2000.0)  # Hz: the tonal sources' default fundamental range, uniform


# ----------------------------------------------------------------------------- harmonic
@dataclass(frozen=True)
class HarmonicConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    f0: tuple[float, float] = F0_RANGE  # fundamental in Hz
    partials: tuple[int, int] = (3, 15)  # number of partials, uniform integer
    gamma: tuple[float, float] = (0.5, 1.5)  # partial k has amplitude k^-gamma ...
    gain: tuple[float, float] = (0.5, 1.2)  # ... times its own random gain
    detune: float = 0.005  # each partial detuned by up to +/- this fraction

    @property
    def max_partials(self) -> int:
        return int(self.partials[1])


class Harmonic(Source):
    name = "harmonic"
    tonal = True
    config_cls = HarmonicConfig
    factor_fill = {"f0": math.nan, "partials": -1, "gamma": math.nan}

    def check(self, cfg, world, key):
        check_common(key, cfg)
        check_f0(key, cfg.f0, world)
        check_interval(f"{key}.partials", cfg.partials, 1, 256)
        check_interval(f"{key}.gamma", cfg.gamma, 0.0)
        check_interval(f"{key}.gain", cfg.gain, 0.0)
        check_range(f"{key}.detune", cfg.detune, 0.0, 0.5)

    def sample(self, cfg, n, rng):
        k_max = cfg.max_partials
        return {
            "f0": rng.uniform(n, *cfg.f0),
            "partials": rng.integers(n, cfg.partials[0], cfg.partials[1]),
            "gamma": rng.uniform(n, *cfg.gamma),
            "partial_gain": rng.uniform((n, k_max), *cfg.gain),
            "partial_detune": rng.uniform((n, k_max), -cfg.detune, cfg.detune),
            "partial_phase": rng.uniform((n, k_max), 0.0, 2 * math.pi),
        }

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        f0 = factors["f0"]
        k = torch.arange(1, cfg.max_partials + 1, device=f0.device, dtype=f0.dtype)
        freqs = f0[:, None] * k * (1 + factors["partial_detune"])
        amps = factors["partial_gain"] * k.pow(-factors["gamma"][:, None])
        amps = amps * (k <= factors["partials"][:, None])
        return Partials(freqs, amps, factors["partial_phase"])


# ----------------------------------------------------------------------------- FM
@dataclass(frozen=True)
class FMConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    f0: tuple[float, float] = F0_RANGE  # carrier frequency in Hz
    ratios: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.14)  # modulator / carrier, one chosen
    index: tuple[float, float] = (0.5, 8.0)  # modulation index beta


class FM(Source):
    name = "fm"
    tonal = True
    config_cls = FMConfig
    factor_fill = {"f0": math.nan, "fm_ratio": math.nan, "fm_index": math.nan}

    def check(self, cfg, world, key):
        check_common(key, cfg)
        check_f0(key, cfg.f0, world)
        if not cfg.ratios:
            raise ConfigError(f"{key}.ratios", "needs at least one ratio")
        for i, r in enumerate(cfg.ratios):
            check_range(f"{key}.ratios[{i}]", r, 1e-6)
        check_interval(f"{key}.index", cfg.index, 0.0)

    def sample(self, cfg, n, rng):
        ratios = torch.tensor(cfg.ratios, dtype=torch.float32, device=rng.device)
        return {
            "f0": rng.uniform(n, *cfg.f0),
            "fm_ratio": ratios[rng.integers(n, 0, len(cfg.ratios) - 1)],
            "fm_index": rng.uniform(n, *cfg.index),
            "fm_phase": rng.uniform((n, 2), 0.0, 2 * math.pi),
        }

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        """sin(wc t + pc + b sin(wm t + pm)) = sum_n J_n(b) sin((wc + n wm) t + pc + n pm): the
        sidebands as partials (exact up to |n| <= max index + 12, where J_n is below 1e-6), so
        that the source is band-limited; lines at negative frequencies fold back with their sign.
        Carrier and modulator lie on the clip's FFT grid, so the source is periodic over the clip."""
        f0 = factors["f0"]
        beta = factors["fm_index"]
        K = int(math.ceil(cfg.index[1])) + 12
        fc = quantize_frequency(f0, num_samples, sample_rate)[:, None].double()
        fm = quantize_frequency(f0 * factors["fm_ratio"], num_samples, sample_rate)[:, None].double()
        n = torch.arange(-K, K + 1, device=f0.device, dtype=torch.float64)
        jn = bessel_j(beta.double(), K)  # (m, K + 1): J_0 .. J_K
        sign = torch.where(n < 0, (-1.0) ** n.abs(), torch.ones_like(n))
        amp = jn[:, n.abs().long()] * sign  # J_-n = (-1)^n J_n
        freq = fc + n * fm
        phase = factors["fm_phase"][:, :1].double() + n * factors["fm_phase"][:, 1:].double()
        folded = freq < 0  # sin(-w t + p) = -sin(w t - p)
        return Partials(freq.abs().float(), torch.where(folded, -amp, amp).float(),
                        torch.where(folded, -phase, phase).float())


def bessel_j(x: torch.Tensor, order: int) -> torch.Tensor:
    """Bessel functions J_0..J_order of x, shape (m, order + 1), float64.

    J_n(x) = (1 / 2 pi) integral over one period of cos(n t - x sin t): the trapezoid rule on
    M points is exact up to terms of order J_(M - n)(x), negligible for M > 2 (n + |x|) + 32."""
    x = x.double()
    M = 2 * (order + int(math.ceil(x.abs().max().item()))) + 32
    t = torch.arange(M, device=x.device, dtype=torch.float64) * (2 * math.pi / M)
    n = torch.arange(order + 1, device=x.device, dtype=torch.float64)
    return torch.cos(n[:, None] * t - x[:, None, None] * torch.sin(t)).mean(-1)


# ----------------------------------------------------------------------------- pulses
PULSE_SHAPES = ("sawtooth", "square", "triangle")


@dataclass(frozen=True)
class PulseConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    f0: tuple[float, float] = F0_RANGE  # fundamental in Hz
    shapes: tuple[str, ...] = PULSE_SHAPES  # waveforms to choose from, band-limited


class Pulse(Source):
    name = "pulse"
    tonal = True
    config_cls = PulseConfig
    factor_fill = {"f0": math.nan, "pulse_shape": -1}
    categories = {"pulse_shape": PULSE_SHAPES}

    def check(self, cfg, world, key):
        check_common(key, cfg)
        check_f0(key, cfg.f0, world)
        check_choices(f"{key}.shapes", cfg.shapes, PULSE_SHAPES)

    def sample(self, cfg, n, rng):
        return {
            "f0": rng.uniform(n, *cfg.f0),
            "pulse_shape": rng.choose(n, cfg.shapes, PULSE_SHAPES),
            "pulse_phase": rng.uniform(n, 0.0, 2 * math.pi),
        }

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        f0 = quantize_frequency(factors["f0"], num_samples, sample_rate)
        shape = factors["pulse_shape"][:, None]
        k_max = max(1, int(sample_rate / 2 / float(f0.min())) + 1)
        k = torch.arange(1, k_max + 1, device=f0.device, dtype=f0.dtype)
        odd = (k % 2 == 1).to(f0.dtype)
        # Fourier series of the ideal waveforms; only harmonics below Nyquist are placed
        saw = (2 / math.pi) / k * torch.where(k % 2 == 1, 1.0, -1.0)
        square = (4 / math.pi) / k * odd
        tri = (8 / math.pi**2) / k**2 * odd * torch.where(k % 4 == 1, 1.0, -1.0)
        amps = torch.where(shape == 0, saw, torch.where(shape == 1, square, tri))
        freqs = f0[:, None] * k
        phases = factors["pulse_phase"][:, None] * k  # a time shift of the whole waveform
        return Partials(freqs, amps, phases)


# ----------------------------------------------------------------------------- noise
NOISE_COLOURS = ("white", "pink", "brown")


@dataclass(frozen=True)
class NoiseConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    colours: tuple[str, ...] = NOISE_COLOURS  # spectral slopes 0, -3, -6 dB/octave
    floor_hz: float = 20.0  # below this the pink/brown slope is held flat


class Noise(Source):
    name = "noise"
    config_cls = NoiseConfig
    factor_fill = {"noise_colour": -1}
    categories = {"noise_colour": NOISE_COLOURS}

    def check(self, cfg, world, key):
        check_common(key, cfg)
        check_choices(f"{key}.colours", cfg.colours, NOISE_COLOURS)
        check_range(f"{key}.floor_hz", cfg.floor_hz, 1e-3)

    def sample(self, cfg, n, rng):
        return {"noise_colour": rng.choose(n, cfg.colours, NOISE_COLOURS)}

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        colour = factors["noise_colour"]
        half = num_samples // 2 + 1
        f = torch.arange(half, device=colour.device, dtype=torch.float32) * (sample_rate / num_samples)
        f = f.clamp_min(cfg.floor_hz)
        slopes = torch.stack([torch.ones_like(f), f.rsqrt(), f.reciprocal()])  # white, pink, brown amplitude
        return rng.complex_normal((len(colour), half)) * slopes[colour]
