"""Modal sources: struck or scraped bars, plates, membranes and bells as sums of exponentially damped sinusoids,
rendered exactly in the clip's DFT (docs/world.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from audiopg.core.config import check_interval, check_range
from audiopg.core.errors import ConfigError
from audiopg.synth.registry import DB60, Source, check_choices, check_common


def _plate_ratios(aspect: float = (1 + 5 ** 0.5) / 2, count: int = 8) -> tuple[float, ...]:
    modes = sorted((m * m + (aspect * k) ** 2) for m in range(1, 9) for k in range(1, 9))
    return tuple(v / modes[0] for v in modes[:count])


BODY_RATIOS: dict[str, tuple[float, ...]] = {
    "bar": (1.0, 2.756, 5.404, 8.933, 13.344, 18.638),
    "plate": _plate_ratios(),
    "membrane": (1.0, 1.594, 2.136, 2.296, 2.653, 2.918, 3.156, 3.501),
    "bell": (1.0, 2.0, 2.4, 3.0, 4.0, 5.0, 5.333, 6.0),
}
BODIES = tuple(BODY_RATIOS)
MODES = max(len(r) for r in BODY_RATIOS.values())
EXCITATIONS = ("struck", "scraped")


def strike_train(factors: dict[str, torch.Tensor], interval: torch.Tensor | None, num_samples: int,
                 sample_rate: int) -> torch.Tensor:
    """Unit impulses (m, num_samples) at the peak of every event's attack and then every ``interval``
    seconds (m,) until the event's release begins; one strike at 0 where there are no events."""
    m = (interval if interval is not None else next(iter(factors.values()))).shape[0]
    device = next(iter(factors.values())).device
    train = torch.zeros(m, num_samples, device=device)
    if "event_onset" not in factors:
        train[:, 0] = 1.0
        return train
    onset, dur = factors["event_onset"].double(), factors["event_duration"].double()
    peak = onset + factors["event_attack"].double() * dur
    end = onset + (1 - factors["event_release"].double()) * dur
    if interval is None:
        J = 1
        times = peak[..., None]
    else:
        span = float((end - peak).nan_to_num(0.0).max())
        J = max(1, int(span / float(interval.min())) + 1)
        times = peak[..., None] + interval.double()[:, None, None] * torch.arange(J, device=device)
    first = torch.arange(J, device=device) == 0
    valid = ~torch.isnan(times) & ((times < end[..., None]) | first)
    pos = torch.round(times.nan_to_num(0.0) * sample_rate).long() % num_samples
    train.scatter_add_(1, pos.reshape(m, -1), valid.reshape(m, -1).float())
    return train


def damped_sines_spectrum(freqs: torch.Tensor, t60: torch.Tensor, amps: torch.Tensor, num_samples: int,
                          sample_rate: int) -> torch.Tensor:
    """One-sided DFT (m, num_samples // 2 + 1) of sum_k amps_k r_k^n sin(2 pi f_k n / fs), n >= 0,
    wrapped periodically over ``num_samples`` (exact: the DTFT sampled at the bins), complex64.

    With z = r e^(j W): sin -> (1/2j) [P(W - w) - P(-W - w)], P(t) = 1 / (1 - r e^(jt)), computed as
    ((1 - r) + 2 r sin^2(t/2) + j r sin t) / ((1 - r)^2 + 4 r sin^2(t/2)), which stays accurate in
    float32 next to a resonance.  Modes with amplitude 0, NaN or at/above 0.45 fs are left out."""
    m, K = freqs.shape
    bins = num_samples // 2 + 1
    w = 2 * math.pi * torch.arange(bins, dtype=torch.float64, device=freqs.device) / num_samples
    re = torch.zeros(m, bins, device=freqs.device)
    im = torch.zeros(m, bins, device=freqs.device)
    keep = (amps != 0) & ~torch.isnan(freqs) & (freqs < 0.45 * sample_rate) & (t60 > 0)
    for k in range(K):  # a handful of modes: one (m, bins) pass each keeps memory small
        a = torch.where(keep[:, k], amps[:, k], torch.zeros_like(amps[:, k])).float()[:, None]
        if not bool((a != 0).any()):
            continue
        step = DB60 / (t60[:, k].double().nan_to_num(1.0).clamp_min(1e-4) * sample_rate)
        one_minus_r = (-torch.expm1(-step)).float()[:, None]
        r = torch.exp(-step).float()[:, None]
        W = 2 * math.pi * freqs[:, k].double().nan_to_num(0.0)[:, None] / sample_rate
        for sign in (1.0, -1.0):  # P(W - w) - P(-W - w)
            theta = torch.remainder(sign * W - w + math.pi, 2 * math.pi).float() - math.pi
            half = torch.sin(0.5 * theta)
            s2 = half * half
            den = one_minus_r * one_minus_r + 4 * r * s2
            p_re = (one_minus_r + 2 * r * s2) / den
            p_im = r * torch.sin(theta) / den
            re += sign * a * 0.5 * p_im  # (1/2j)(x + jy) = (y - jx) / 2
            im -= sign * a * 0.5 * p_re
    return torch.complex(re, im)


@dataclass(frozen=True)
class ModalConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    bodies: tuple[str, ...] = BODIES  # mode-ratio tables to choose from
    f1: tuple[float, float] = (80.0, 2000.0)  # lowest mode in Hz, log-uniform
    decay: tuple[float, float] = (0.1, 2.5)  # T60 of the lowest mode in s, log-uniform
    decay_slope: tuple[float, float] = (0.0, 1.0)  # mode k's T60 = decay * (f_k / f_1) ^ -slope
    amplitude: tuple[float, float] = (0.1, 1.0)  # each mode's amplitude (where the body is hit)
    detune: float = 0.01  # each mode off its ideal ratio by up to +/- this fraction
    excitations: tuple[str, ...] = EXCITATIONS  # struck (impulses) or scraped (noise)
    strike_interval: tuple[float, float] = (0.15, 2.0)  # s between repeated strikes within an event, log-uniform


class Modal(Source):
    name = "modal"
    config_cls = ModalConfig
    factor_fill = {"modal_body": -1, "modal_excitation": -1, "modal_f1": math.nan, "decay": math.nan,
                   "decay_slope": math.nan, "strike_interval": math.nan}
    categories = {"modal_body": BODIES, "modal_excitation": EXCITATIONS}

    def check(self, cfg, world, key):
        check_common(key, cfg)
        check_choices(f"{key}.bodies", cfg.bodies, BODIES)
        check_choices(f"{key}.excitations", cfg.excitations, EXCITATIONS)
        check_interval(f"{key}.f1", cfg.f1, 1.0)
        if cfg.f1[1] >= 0.45 * world.sample_rate:
            raise ConfigError(f"{key}.f1", f"max {cfg.f1[1]} Hz must be below 0.45 x the sample rate")
        check_interval(f"{key}.decay", cfg.decay, 1e-3, 60.0)
        check_interval(f"{key}.decay_slope", cfg.decay_slope, 0.0, 4.0)
        check_interval(f"{key}.amplitude", cfg.amplitude, 0.0)
        check_range(f"{key}.detune", cfg.detune, 0.0, 0.2)
        check_interval(f"{key}.strike_interval", cfg.strike_interval, 0.01, 60.0)

    def sample(self, cfg, n, rng):
        device = rng.device
        table = torch.full((len(BODIES), MODES), math.nan, device=device)
        for i, b in enumerate(BODIES):
            table[i, : len(BODY_RATIOS[b])] = torch.tensor(BODY_RATIOS[b])
        body = rng.choose(n, cfg.bodies, BODIES)
        f1 = rng.log_uniform(n, *cfg.f1)
        decay = rng.log_uniform(n, *cfg.decay)
        slope = rng.uniform(n, *cfg.decay_slope)
        detune = rng.uniform((n, MODES), -cfg.detune, cfg.detune)
        detune = torch.where(torch.arange(MODES, device=device) == 0, 0.0, detune)  # f1 is the lowest mode
        amps = rng.uniform((n, MODES), *cfg.amplitude)
        excitation = rng.choose(n, cfg.excitations, EXCITATIONS)
        interval = rng.log_uniform(n, *cfg.strike_interval)
        ratios = table[body] * (1 + detune)
        freqs = f1[:, None] * ratios
        return {
            "modal_body": body,
            "modal_excitation": excitation,
            "modal_f1": f1,
            "decay": decay,
            "decay_slope": slope,
            "mode_freqs": freqs,
            "mode_t60": decay[:, None] * ratios.pow(-slope[:, None]),
            "mode_amps": torch.where(torch.isnan(ratios), 0.0, amps),
            "strike_interval": interval,
        }

    def render(self, cfg, factors, num_samples, sample_rate, rng):
        m = factors["modal_f1"].shape[0]
        h = damped_sines_spectrum(factors["mode_freqs"], factors["mode_t60"], factors["mode_amps"],
                                  num_samples, sample_rate)
        noise = rng.complex_normal((m, num_samples // 2 + 1))  # drawn for every clip: the scraped ones use it
        strikes = torch.fft.rfft(strike_train(factors, factors["strike_interval"], num_samples, sample_rate))
        scraped = (factors["modal_excitation"] == EXCITATIONS.index("scraped"))[:, None]
        return torch.where(scraped, noise, strikes) * h
