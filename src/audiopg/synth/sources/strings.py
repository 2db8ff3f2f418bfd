"""Plucked and bowed strings: the extended Karplus-Strong loop, evaluated at the clip's DFT bins (exact for a loop
with an ideal fractional delay), so that the string is periodic over the clip like every source (docs/world.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from audiopg.core.config import check_interval, check_range
from audiopg.core.errors import ConfigError
from audiopg.synth.registry import (
    DB60,
    Source,
    check_choices,
    check_common,
    check_f0,
    quantize_frequency,
)
from audiopg.synth.sources.modal import strike_train

STRING_EXCITATIONS = ("plucked", "bowed")


def loop_filter(brightness: torch.Tensor) -> torch.Tensor:
    """The second tap S of the loop low-pass (1 - S) + S z^-1."""
    return 0.5 * (1 - brightness)


def loop_parameters(f0: torch.Tensor, decay: torch.Tensor, brightness: torch.Tensor, sample_rate: int):
    """(D, rho, S) in float64 for fundamentals ``f0``, fundamental T60 ``decay`` and ``brightness``."""
    f0, decay, S = f0.double(), decay.double(), loop_filter(brightness).double()
    w1 = 2 * math.pi * f0 / sample_rate
    tau = torch.atan2(S * torch.sin(w1), 1 - S + S * torch.cos(w1)) / w1  # phase delay of H at w1
    D = sample_rate / f0 - tau
    r = torch.exp(-DB60 / (decay * sample_rate))  # the fundamental's pole radius per sample
    h = torch.abs((1 - S) + S / r * torch.exp(-1j * w1))  # |H(p)| at the pole p = r e^(j w1)
    rho = r.pow(D) / h
    return D, rho, S


def partial_t60(f0: torch.Tensor, decay: torch.Tensor, brightness: torch.Tensor, k: torch.Tensor,
                sample_rate: int) -> torch.Tensor:
    """First-order T60 (s) of partial ``k`` (broadcast): the loop gain rho |H(w_k)| per period 1 / f0."""
    _, rho, S = loop_parameters(f0, decay, brightness, sample_rate)
    w = 2 * math.pi * k * f0.double()[..., None] / sample_rate
    g = rho[..., None] * torch.sqrt((1 - S[..., None]) ** 2 + S[..., None] ** 2
                                    + 2 * S[..., None] * (1 - S[..., None]) * torch.cos(w))
    return (-DB60 / (f0.double()[..., None] * torch.log(g))).float()


@dataclass(frozen=True)
class StringConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    f0: tuple[float, float] = (55.0, 1000.0)  # fundamental in Hz, log-uniform
    decay: tuple[float, float] = (0.3, 4.0)  # T60 of the fundamental in s, log-uniform
    brightness: tuple[float, float] = (0.0, 0.9)  # loop low-pass: 0 classic average, 1 none
    pluck_position: tuple[float, float] = (0.05, 0.5)  # fraction of the length from the bridge
    excitations: tuple[str, ...] = STRING_EXCITATIONS  # plucked or bowed
    bow_noise_db: float = -30.0  # bow noise power relative to the bowed sawtooth's


class KarplusStrong(Source):
    name = "string"
    config_cls = StringConfig
    factor_fill = {"f0": math.nan, "decay": math.nan, "brightness": math.nan, "pluck_position": math.nan,
                   "string_excitation": -1}
    categories = {"string_excitation": STRING_EXCITATIONS}

    def check(self, cfg, world, key):
        check_common(key, cfg)
        check_f0(key, cfg.f0, world)
        if cfg.f0[1] >= 0.25 * world.sample_rate:
            raise ConfigError(f"{key}.f0", f"max {cfg.f0[1]} Hz must be below a quarter of the sample rate "
                              "(a loop of at least 4 samples)")
        check_interval(f"{key}.decay", cfg.decay, 1e-3, 60.0)
        check_interval(f"{key}.brightness", cfg.brightness, 0.0, 1.0)
        check_interval(f"{key}.pluck_position", cfg.pluck_position, 0.01, 0.99)
        check_choices(f"{key}.excitations", cfg.excitations, STRING_EXCITATIONS)
        check_range(f"{key}.bow_noise_db", cfg.bow_noise_db, -200.0, 40.0)

    def sample(self, cfg, n, rng):
        return {
            "f0": rng.log_uniform(n, *cfg.f0),
            "decay": rng.log_uniform(n, *cfg.decay),
            "brightness": rng.uniform(n, *cfg.brightness),
            "pluck_position": rng.uniform(n, *cfg.pluck_position),
            "string_excitation": rng.choose(n, cfg.excitations, STRING_EXCITATIONS),
        }

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        f0 = factors["f0"]
        m, N, bins = f0.shape[0], num_samples, num_samples // 2 + 1
        bowed = factors["string_excitation"] == STRING_EXCITATIONS.index("bowed")
        f0 = torch.where(bowed, quantize_frequency(f0, N, sample_rate), f0)  # bowed: periodic over the clip
        D, rho, S = loop_parameters(f0, factors["decay"], factors["brightness"], sample_rate)
        w = 2 * math.pi * torch.arange(bins, device=f0.device, dtype=torch.float64) / N
        # the loop gain rho H(e^jw) e^-jwD with its phase wrapped in float64, then in complex64
        h_mag = torch.sqrt((1 - S)[:, None] ** 2 + S[:, None] ** 2 + 2 * (S * (1 - S))[:, None] * torch.cos(w))
        h_arg = -torch.atan2(S[:, None] * torch.sin(w), (1 - S)[:, None] + S[:, None] * torch.cos(w))
        phase = torch.remainder(h_arg - w * D[:, None], 2 * math.pi).float()
        loop = 1 / (1 - torch.polar((rho[:, None] * h_mag).float(), phase))
        comb_delay = factors["pluck_position"].double() * sample_rate / f0.double()  # beta x the loop's delay
        comb = 1 - torch.polar(torch.ones(1, device=f0.device),
                               torch.remainder(-w * comb_delay[:, None], 2 * math.pi).float())
        # excitations: impulses at the plucks; a sawtooth at f0 plus bow noise
        pluck = torch.fft.rfft(strike_train(factors, None, N, sample_rate))
        b0 = torch.round(f0.double() * N / sample_rate)  # the bowed fundamental's bin
        b = torch.arange(bins, device=f0.device, dtype=torch.float64)
        k = b / b0[:, None]
        harmonic = (k == torch.round(k)) & (b > 0)
        saw_im = torch.where(harmonic, -(N / 2) / k.clamp_min(1.0), torch.zeros_like(k))  # sin(k w0 t) / k
        saw = torch.complex(torch.zeros_like(saw_im), saw_im).to(torch.complex64)
        saw_power = ((N / 2) ** 2 * (1 / torch.arange(1, bins, device=f0.device, dtype=torch.float64) ** 2)[None, :]
                     * (torch.arange(1, bins, device=f0.device)[None, :] <= (bins - 1) / b0[:, None])).sum(1)
        noise = rng.complex_normal((m, bins))
        noise = noise * torch.sqrt(10 ** (cfg.bow_noise_db / 10) * saw_power / bins).float()[:, None]
        drive = torch.where(bowed[:, None], saw + noise, pluck)
        return drive * comb * loop
