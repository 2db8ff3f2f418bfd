"""Sound sources of the procedural world, and the registry that the sampler reads.

A source type is a :class:`Source` subclass registered with :func:`register_source`.
It brings

* ``config_cls``: a frozen dataclass of its ranges (always with ``enabled`` and
  ``weight``, the relative chance that a clip uses it);
* ``sample(cfg, n, rng)``: its ground-truth factors for ``n`` clips, as tensors;
* ``render(cfg, factors, num_samples, sample_rate, rng)``: the source signal of the
  clips given, periodic over the clip, as one of
  - :class:`Partials`: sinusoids (frequency, amplitude, phase), each (m, K);
  - a complex tensor (m, num_samples // 2 + 1): a one-sided spectrum;
  - a real tensor (m, num_samples): a time signal.
  The world puts partials and spectra of the whole batch into one spectrum,
  normalizes every clip to RMS 1, applies the low-pass there and makes all
  clips with one inverse FFT.

The world draws every source's factors for every clip (so the random stream
does not depend on which source a clip gets), keeps each clip's own, and
renders each source once for all the clips that use it: there is no per-clip
Python loop.

Periodic sources (harmonic, pulse) and coloured noise are synthesized in the
frequency domain with one inverse real FFT per clip.  Their partial frequencies
are rounded to the clip's FFT grid (``sample_rate / num_samples``: 0.1 Hz for
10.24 s clips), which makes the source exactly periodic over the clip, so that
events cut anywhere from it see the same sound.  Pulses are therefore
band-limited by construction: only harmonics below Nyquist exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch

from audiopg.core.config import check_interval, check_range
from audiopg.core.errors import ConfigError

if TYPE_CHECKING:
    from audiopg.synth.config import WorldConfig
    from audiopg.synth.world import Randomness

SOURCES: dict[str, "Source"] = {}


def register_source(source_cls: type["Source"]) -> type["Source"]:
    """Class decorator: make a source type available to every WorldConfig by its ``name``."""
    if not source_cls.name:
        raise ValueError("a source type needs a name")
    SOURCES[source_cls.name] = source_cls()
    return source_cls


class Source:
    name: ClassVar[str] = ""
    tonal: ClassVar[bool] = False  # its ``f0`` factor is the pitch of a periodic tone (analysis sweeps it)
    config_cls: ClassVar[type]
    # factor name -> value for clips that do not use this source (NaN or -1)
    factor_fill: ClassVar[dict[str, float]] = {}
    # categorical factor name -> the names of its integer codes
    categories: ClassVar[dict[str, tuple[str, ...]]] = {}

    def check(self, cfg: Any, world: "WorldConfig", key: str) -> None:
        """Cross-checks that need the world (e.g. f0 below Nyquist); raise ConfigError."""

    def sample(self, cfg: Any, n: int, rng: "Randomness") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def render(self, cfg: Any, factors: dict[str, torch.Tensor], num_samples: int, sample_rate: int,
               rng: "Randomness") -> torch.Tensor:
        raise NotImplementedError


def _check_common(key: str, cfg: Any) -> None:
    check_range(f"{key}.weight", cfg.weight, 0.0)


def check_choices(key: str, chosen: tuple[str, ...], known: tuple[str, ...]) -> None:
    """Raise unless ``chosen`` names at least one of ``known`` and nothing else."""
    if not chosen:
        raise ConfigError(key, "needs at least one entry")
    for name in chosen:
        if name not in known:
            raise ConfigError(key, f"unknown value {name!r} (known: {', '.join(known)})")


def choose(rng: "Randomness", n: int, chosen: tuple[str, ...], known: tuple[str, ...]) -> torch.Tensor:
    """A code of ``known`` per clip, drawn uniformly among the ``chosen`` names."""
    codes = torch.tensor([known.index(name) for name in chosen], device=rng.device)
    return codes[rng.integers(n, 0, len(codes) - 1)]


def _check_f0(key: str, f0: tuple[float, float], world: "WorldConfig") -> None:
    check_interval(f"{key}.f0", f0, 1e-3)
    if f0[0] <= 0:
        raise ConfigError(f"{key}.f0", f"must be positive, got {f0[0]}")
    if f0[1] >= world.sample_rate / 2:
        raise ConfigError(f"{key}.f0", f"max {f0[1]} Hz must be below Nyquist ({world.sample_rate / 2:g} Hz)")


class Partials(NamedTuple):
    """Sinusoids ``amp * sin(2 pi freq t + phase)``, each field (m, K); amp 0 drops one."""

    freqs: torch.Tensor
    amps: torch.Tensor
    phases: torch.Tensor


def place_partials(spec: torch.Tensor, rows: torch.Tensor, partials: Partials, num_samples: int,
                   sample_rate: int) -> None:
    """Add sinusoids into rows of a one-sided spectrum (n, num_samples // 2 + 1), in place.

    Frequencies are rounded to the clip's FFT bins; those at or above Nyquist (and DC) are
    dropped, which makes every partial source band-limited.
    """
    freqs, amps, phases = partials
    bins = torch.round(freqs * num_samples / sample_rate).long()
    half = num_samples // 2
    keep = (bins >= 1) & (bins < half) & (freqs < sample_rate / 2) & (amps != 0)
    # x(t) = a sin(w t + phi) -> bin value a N/2 exp(i (phi - pi/2))
    values = torch.polar(amps * keep * (num_samples / 2), phases - math.pi / 2).to(spec.dtype)
    row = rows[:, None].expand_as(bins)
    spec.index_put_((row[keep], bins[keep]), values[keep], accumulate=True)


def quantize_frequency(freq: torch.Tensor, num_samples: int, sample_rate: int) -> torch.Tensor:
    """The frequency a periodic source actually renders at: the nearest FFT bin of the clip."""
    return torch.round(freq * num_samples / sample_rate) * sample_rate / num_samples


# ----------------------------------------------------------------------------- harmonic
@dataclass(frozen=True)
class HarmonicConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    f0: tuple[float, float] = (50.0, 2000.0)  # fundamental in Hz
    partials: tuple[int, int] = (3, 15)  # number of partials, uniform integer
    gamma: tuple[float, float] = (0.5, 1.5)  # partial k has amplitude k^-gamma ...
    gain: tuple[float, float] = (0.5, 1.2)  # ... times its own random gain
    detune: float = 0.005  # each partial detuned by up to +/- this fraction

    @property
    def max_partials(self) -> int:
        return int(self.partials[1])


@register_source
class Harmonic(Source):
    name = "harmonic"
    tonal = True
    config_cls = HarmonicConfig
    factor_fill = {"f0": math.nan, "partials": -1, "gamma": math.nan}

    def check(self, cfg, world, key):
        _check_common(key, cfg)
        _check_f0(key, cfg.f0, world)
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
    f0: tuple[float, float] = (50.0, 2000.0)  # carrier frequency in Hz
    ratios: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.14)  # modulator / carrier, one chosen
    index: tuple[float, float] = (0.5, 8.0)  # modulation index beta


@register_source
class FM(Source):
    name = "fm"
    tonal = True
    config_cls = FMConfig
    factor_fill = {"f0": math.nan, "fm_ratio": math.nan, "fm_index": math.nan}

    def check(self, cfg, world, key):
        _check_common(key, cfg)
        _check_f0(key, cfg.f0, world)
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
    f0: tuple[float, float] = (50.0, 2000.0)  # fundamental in Hz
    shapes: tuple[str, ...] = PULSE_SHAPES  # waveforms to choose from, band-limited


@register_source
class Pulse(Source):
    name = "pulse"
    tonal = True
    config_cls = PulseConfig
    factor_fill = {"f0": math.nan, "pulse_shape": -1}
    categories = {"pulse_shape": PULSE_SHAPES}

    def check(self, cfg, world, key):
        _check_common(key, cfg)
        _check_f0(key, cfg.f0, world)
        check_choices(f"{key}.shapes", cfg.shapes, PULSE_SHAPES)

    def sample(self, cfg, n, rng):
        return {
            "f0": rng.uniform(n, *cfg.f0),
            "pulse_shape": choose(rng, n, cfg.shapes, PULSE_SHAPES),
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


@register_source
class Noise(Source):
    name = "noise"
    config_cls = NoiseConfig
    factor_fill = {"noise_colour": -1}
    categories = {"noise_colour": NOISE_COLOURS}

    def check(self, cfg, world, key):
        _check_common(key, cfg)
        check_choices(f"{key}.colours", cfg.colours, NOISE_COLOURS)
        check_range(f"{key}.floor_hz", cfg.floor_hz, 1e-3)

    def sample(self, cfg, n, rng):
        return {"noise_colour": choose(rng, n, cfg.colours, NOISE_COLOURS)}

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        colour = factors["noise_colour"]
        half = num_samples // 2 + 1
        f = torch.arange(half, device=colour.device, dtype=torch.float32) * (sample_rate / num_samples)
        f = f.clamp_min(cfg.floor_hz)
        slopes = torch.stack([torch.ones_like(f), f.rsqrt(), f.reciprocal()])  # white, pink, brown amplitude
        return rng.complex_normal((len(colour), half)) * slopes[colour]
