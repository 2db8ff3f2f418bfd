"""Texture sources: grain clouds (rain, crackle, applause), modulated band noise (wind, engines, hum) and gliding
tones with vibrato and tremolo (chirps, sirens), as time signals at their exact rates (docs/world.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from audiopg.core.config import check_interval
from audiopg.core.errors import ConfigError
from audiopg.synth.registry import Source, check_choices, check_common

MOD_SHAPES = ("sine", "random")


def _freqs(num_samples: int, sample_rate: int, device) -> torch.Tensor:
    return torch.arange(num_samples // 2 + 1, device=device, dtype=torch.float32) * (sample_rate / num_samples)


def _normalize_rms(x: torch.Tensor) -> torch.Tensor:
    return x / x.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


# ----------------------------------------------------------------------------- granular
@dataclass(frozen=True)
class GranularConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    rate: tuple[float, float] = (3.0, 1000.0)  # grains per second, log-uniform
    seconds: tuple[float, float] = (0.002, 0.05)  # grain length, log-uniform
    centroid: tuple[float, float] = (300.0, 4000.0)  # spectral centroid in Hz, log-uniform
    bandwidth: tuple[float, float] = (0.05, 0.3)  # band standard deviation / centroid


class Granular(Source):
    name = "granular"
    config_cls = GranularConfig
    factor_fill = {"grain_rate": math.nan, "grain_seconds": math.nan, "grain_centroid": math.nan,
                   "grain_bandwidth": math.nan}

    def check(self, cfg, world, key):
        check_common(key, cfg)
        check_interval(f"{key}.rate", cfg.rate, 0.01, 0.5 * world.sample_rate)
        check_interval(f"{key}.seconds", cfg.seconds, 4.0 / world.sample_rate, 1.0)
        check_interval(f"{key}.centroid", cfg.centroid, 1.0)
        check_interval(f"{key}.bandwidth", cfg.bandwidth, 0.0, 1.0)
        if cfg.centroid[1] * (1 + 3 * cfg.bandwidth[1]) >= world.sample_rate / 2:
            raise ConfigError(f"{key}.centroid", "the highest band (centroid + 3 bandwidths) must stay below Nyquist")

    def sample(self, cfg, n, rng):
        return {
            "grain_rate": rng.log_uniform(n, *cfg.rate),
            "grain_seconds": rng.log_uniform(n, *cfg.seconds),
            "grain_centroid": rng.log_uniform(n, *cfg.centroid),
            "grain_bandwidth": rng.uniform(n, *cfg.bandwidth),
        }

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        rate = factors["grain_rate"]
        m, N, device = rate.shape[0], num_samples, rate.device
        seconds = N / sample_rate
        count = torch.round(rate * seconds).clamp_min(1).long()
        G = max(1, int(math.ceil(cfg.rate[1] * seconds)), int(count.max()))
        # grain onsets (exactly ``count`` of them) and gains, drawn for the most grains any clip may have
        pos = (rng.uniform((m, G)) * N).long().clamp_max(N - 1)
        gain = 10 ** (rng.uniform((m, G), -6.0, 6.0) / 20)
        noise = rng.complex_normal((m, N // 2 + 1))
        gain = gain * (torch.arange(G, device=device) < count[:, None])
        train = torch.zeros(m, N, device=device).scatter_add_(1, pos, gain)
        length = (factors["grain_seconds"] * sample_rate).clamp_min(2.0)[:, None]
        j = torch.arange(N, device=device, dtype=torch.float32)
        hann = torch.where(j < length, 0.5 - 0.5 * torch.cos(2 * math.pi * j / length), torch.zeros_like(j))
        envelope = torch.fft.irfft(torch.fft.rfft(train) * torch.fft.rfft(hann), n=N)  # periodic over the clip
        f = _freqs(N, sample_rate, device)
        centre = factors["grain_centroid"][:, None]
        sigma = (factors["grain_bandwidth"][:, None] * centre).clamp_min(sample_rate / N)
        band = torch.exp(-0.25 * ((f - centre) / sigma) ** 2)  # amplitude; the power is Gaussian with std sigma
        carrier = _normalize_rms(torch.fft.irfft(noise * band, n=N))
        return envelope * carrier


# ----------------------------------------------------------------------------- modulated noise
@dataclass(frozen=True)
class ModulatedNoiseConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    centre: tuple[float, float] = (60.0, 4000.0)  # band centre in Hz, log-uniform
    octaves: tuple[float, float] = (0.05, 2.0)  # band standard deviation in octaves, log-uniform
    rate: tuple[float, float] = (0.1, 40.0)  # modulation rate in Hz, log-uniform
    depth: tuple[float, float] = (0.0, 1.0)  # modulation depth (0: steady, 1: down to silence)
    shapes: tuple[str, ...] = MOD_SHAPES  # sine (engines, hum) or random (wind, surf)


class ModulatedNoise(Source):
    name = "modulated_noise"
    config_cls = ModulatedNoiseConfig
    factor_fill = {"band_centre": math.nan, "band_octaves": math.nan, "mod_rate": math.nan, "mod_depth": math.nan,
                   "mod_shape": -1}
    categories = {"mod_shape": MOD_SHAPES}

    def check(self, cfg, world, key):
        check_common(key, cfg)
        check_interval(f"{key}.centre", cfg.centre, 1.0)
        if cfg.centre[1] >= 0.45 * world.sample_rate:
            raise ConfigError(f"{key}.centre", f"max {cfg.centre[1]} Hz must be below 0.45 x the sample rate")
        check_interval(f"{key}.octaves", cfg.octaves, 1e-3, 10.0)
        check_interval(f"{key}.rate", cfg.rate, 1e-3, 0.25 * world.sample_rate)
        check_interval(f"{key}.depth", cfg.depth, 0.0, 1.0)
        check_choices(f"{key}.shapes", cfg.shapes, MOD_SHAPES)

    def sample(self, cfg, n, rng):
        return {
            "band_centre": rng.log_uniform(n, *cfg.centre),
            "band_octaves": rng.log_uniform(n, *cfg.octaves),
            "mod_rate": rng.log_uniform(n, *cfg.rate),
            "mod_depth": rng.uniform(n, *cfg.depth),
            "mod_shape": rng.choose(n, cfg.shapes, MOD_SHAPES),
            "mod_phase": rng.uniform(n, 0.0, 2 * math.pi),
        }

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        centre = factors["band_centre"]
        m, N, device = centre.shape[0], num_samples, centre.device
        noise = rng.complex_normal((m, N // 2 + 1))
        slow = rng.complex_normal((m, N // 2 + 1))
        f = _freqs(N, sample_rate, device)
        octaves = torch.log2(f.clamp_min(1e-3) / centre[:, None])
        band = torch.exp(-0.25 * (octaves / factors["band_octaves"][:, None]) ** 2) * (f > 0)
        carrier = _normalize_rms(torch.fft.irfft(noise * band, n=N))
        t = torch.arange(N, device=device, dtype=torch.float32) / sample_rate
        cycles = torch.remainder(factors["mod_rate"].double()[:, None] * t.double(), 1.0).float()
        sine = torch.sin(2 * math.pi * cycles + factors["mod_phase"][:, None])
        low = (f > 0) & ((f <= factors["mod_rate"][:, None]) | (f <= sample_rate / N))  # at least the lowest bin
        smooth = torch.fft.irfft(slow * low, n=N)
        smooth = smooth / smooth.abs().amax(-1, keepdim=True).clamp_min(1e-12)  # peak 1: depth 1 just reaches 0
        mod = torch.where((factors["mod_shape"] == MOD_SHAPES.index("sine"))[:, None], sine, smooth)
        return carrier * (1 + factors["mod_depth"][:, None] * mod)


# ----------------------------------------------------------------------------- glides
@dataclass(frozen=True)
class GlideConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    start: tuple[float, float] = (100.0, 4000.0)  # sweep start frequency in Hz, log-uniform
    end: tuple[float, float] = (100.0, 4000.0)  # sweep end frequency in Hz, log-uniform
    seconds: tuple[float, float] = (0.03, 2.0)  # sweep length (repeats within an event), log-uniform
    harmonics: tuple[int, int] = (1, 4)  # harmonics of the swept tone, amplitude 1 / k
    vibrato_rate: tuple[float, float] = (3.0, 8.0)  # Hz
    vibrato_depth: tuple[float, float] = (0.0, 1.0)  # semitones (peak)
    tremolo_rate: tuple[float, float] = (2.0, 12.0)  # Hz
    tremolo_depth: tuple[float, float] = (0.0, 0.8)  # amplitude 1 + depth sin(...)


class Glide(Source):
    name = "glide"
    config_cls = GlideConfig
    factor_fill = {"glide_start": math.nan, "glide_end": math.nan, "glide_seconds": math.nan,
                   "glide_harmonics": -1, "vibrato_rate": math.nan, "vibrato_depth": math.nan,
                   "tremolo_rate": math.nan, "tremolo_depth": math.nan}
    FADE = 0.005  # s: every sweep fades in and out

    def check(self, cfg, world, key):
        check_common(key, cfg)
        for name in ("start", "end"):
            check_interval(f"{key}.{name}", getattr(cfg, name), 1.0)
            if getattr(cfg, name)[1] >= 0.45 * world.sample_rate:
                raise ConfigError(f"{key}.{name}", "must stay below 0.45 x the sample rate")
        check_interval(f"{key}.seconds", cfg.seconds, 4 * self.FADE, 600.0)
        check_interval(f"{key}.harmonics", cfg.harmonics, 1, 32)
        check_interval(f"{key}.vibrato_rate", cfg.vibrato_rate, 0.0, 100.0)
        check_interval(f"{key}.vibrato_depth", cfg.vibrato_depth, 0.0, 12.0)
        check_interval(f"{key}.tremolo_rate", cfg.tremolo_rate, 0.0, 100.0)
        check_interval(f"{key}.tremolo_depth", cfg.tremolo_depth, 0.0, 1.0)

    def sample(self, cfg, n, rng):
        return {
            "glide_start": rng.log_uniform(n, *cfg.start),
            "glide_end": rng.log_uniform(n, *cfg.end),
            "glide_seconds": rng.log_uniform(n, *cfg.seconds),
            "glide_harmonics": rng.integers(n, *cfg.harmonics),
            "vibrato_rate": rng.uniform(n, *cfg.vibrato_rate),
            "vibrato_depth": rng.uniform(n, *cfg.vibrato_depth),
            "tremolo_rate": rng.uniform(n, *cfg.tremolo_rate),
            "tremolo_depth": rng.uniform(n, *cfg.tremolo_depth),
            "glide_phase": rng.uniform((n, 2), 0.0, 2 * math.pi),
        }

    def sweep_time(self, factors, num_samples, sample_rate) -> torch.Tensor:
        """Seconds since the current sweep began (m, N), float64: sweeps start at the latest event onset
        at or before each sample (the clip's start where there is none) and again every glide_seconds."""
        m = factors["glide_start"].shape[0]
        device = factors["glide_start"].device
        t = torch.arange(num_samples, device=device, dtype=torch.float64) / sample_rate
        since = t.expand(m, -1)
        if "event_onset" in factors:
            for e in range(factors["event_onset"].shape[1]):  # a few events
                d = t - factors["event_onset"][:, e, None].double()
                since = torch.where((d >= 0) & (d < since), d, since)  # NaN onsets compare False
        period = factors["glide_seconds"].double()[:, None]
        return torch.remainder(since, period)

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        N, device = num_samples, factors["glide_start"].device
        period = factors["glide_seconds"].double()[:, None]
        u = self.sweep_time(factors, N, sample_rate)
        f_start = factors["glide_start"].double()[:, None]
        ratio = (factors["glide_end"] / factors["glide_start"]).double()[:, None]
        t = torch.arange(N, device=device, dtype=torch.float64) / sample_rate
        vib = factors["vibrato_depth"].double()[:, None] / 12 * torch.sin(
            2 * math.pi * factors["vibrato_rate"].double()[:, None] * t + factors["glide_phase"][:, :1].double())
        freq = f_start * ratio.pow(u / period) * torch.exp2(vib)  # instantaneous frequency (m, N)
        cycles = torch.remainder(torch.cumsum(freq / sample_rate, 1), 1.0).float()  # phase in cycles
        freq = freq.float()
        fade = torch.clamp(torch.minimum(u, period - u) / self.FADE, max=1.0).float()
        out = torch.zeros_like(freq)
        nyq = 0.45 * sample_rate
        for k in range(1, int(factors["glide_harmonics"].max()) + 1):  # a few harmonics
            alias = torch.clamp((nyq - k * freq) / (0.05 * nyq), 0.0, 1.0)  # fade out near Nyquist
            on = (factors["glide_harmonics"] >= k).float()[:, None] / k
            out += torch.sin(2 * math.pi * torch.remainder(k * cycles, 1.0)) * alias * on
        tremolo = 1 + factors["tremolo_depth"][:, None] * torch.sin(
            2 * math.pi * torch.remainder(factors["tremolo_rate"].double()[:, None] * t, 1.0).float()
            + factors["glide_phase"][:, 1:])
        return out * fade * tremolo
