"""The source types a world can use: the :class:`Source` interface, the ``SOURCES`` registry and helpers
shared by the source modules.  docs/world.md tells how to add a source type.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch

from audiopg.core.config import check_interval, check_range
from audiopg.core.errors import ConfigError
from audiopg.synth.rng import Randomness

DB60 = 3 * math.log(10)  # ln(1000): amplitude e-folds per 60 dB of decay


class Partials(NamedTuple):
    """Sinusoids ``amp * sin(2 pi freq t + phase)``, each field (m, K); amp 0 drops one."""

    freqs: torch.Tensor
    amps: torch.Tensor
    phases: torch.Tensor


class Source:
    """A source type: its config dataclass, how it draws its factors and how it renders them (docs/world.md)."""

    name: ClassVar[str] = ""
    tonal: ClassVar[bool] = False  # its ``f0`` factor is the pitch of a periodic tone (analysis sweeps it)
    config_cls: ClassVar[type]
    # factor name -> value for clips that do not use this source (NaN or -1)
    factor_fill: ClassVar[dict[str, float]] = {}
    # categorical factor name -> the names of its integer codes
    categories: ClassVar[dict[str, tuple[str, ...]]] = {}

    def check(self, cfg: Any, world: Any, key: str) -> None:
        """Cross-checks against the ``WorldConfig`` ``world`` (e.g. f0 below Nyquist); raise ConfigError."""

    def sample(self, cfg: Any, n: int, rng: Randomness) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def render(self, cfg: Any, factors: dict[str, torch.Tensor], num_samples: int, sample_rate: int,
               rng: Randomness) -> torch.Tensor | Partials:
        raise NotImplementedError


SOURCES: dict[str, Source] = {}  # source name -> the one instance of its type; filled by audiopg.synth.sources


def register_source(source_cls: type[Source]) -> type[Source]:
    """Make a source type available to every WorldConfig by its ``name`` (usable as a class decorator)."""
    if not source_cls.name:
        raise ValueError("a source type needs a name")
    SOURCES[source_cls.name] = source_cls()
    return source_cls


# ----------------------------------------------------------------------------- helpers of the source types
def check_common(key: str, cfg: Any) -> None:
    """The checks of the settings every source config has (``enabled``, ``weight``)."""
    check_range(f"{key}.weight", cfg.weight, 0.0)


def check_choices(key: str, chosen: tuple[str, ...], known: tuple[str, ...]) -> None:
    """Raise unless ``chosen`` names at least one of ``known`` and nothing else."""
    if not chosen:
        raise ConfigError(key, "needs at least one entry")
    for name in chosen:
        if name not in known:
            raise ConfigError(key, f"unknown value {name!r} (known: {', '.join(known)})")


def check_f0(key: str, f0: tuple[float, float], world: Any) -> None:
    """A positive fundamental range below the Nyquist frequency of the WorldConfig ``world``."""
    check_interval(f"{key}.f0", f0, 1e-3)
    if f0[0] <= 0:
        raise ConfigError(f"{key}.f0", f"must be positive, got {f0[0]}")
    if f0[1] >= world.sample_rate / 2:
        raise ConfigError(f"{key}.f0", f"max {f0[1]} Hz must be below Nyquist ({world.sample_rate / 2:g} Hz)")


def quantize_frequency(freq: torch.Tensor, num_samples: int, sample_rate: int) -> torch.Tensor:
    """The frequency a periodic source actually renders at: the nearest FFT bin of the clip."""
    return torch.round(freq * num_samples / sample_rate) * sample_rate / num_samples
