"""Every random draw of the world goes through one :class:`Randomness`, in a fixed order.

The same seed and device give the same clips; with ``shared=True`` a batch holds one clip's draws.
"""
from __future__ import annotations

import math

import torch


class Randomness:
    """Every random draw of the world, from one generator.

    With ``shared=True`` each draw is made for one clip and repeated for all,
    so that a batch holds one clip's factors (sweeps vary one factor on top).
    """

    def __init__(self, generator: torch.Generator, shared: bool = False):
        self.generator = generator
        self.device = generator.device
        self.shared = shared

    def _shape(self, shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return ((1,) + shape[1:] if self.shared else shape), shape

    def uniform(self, shape, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        draw, full = self._shape(shape)
        u = torch.rand(draw, generator=self.generator, device=self.device)
        return (low + (high - low) * u).expand(full)

    def log_uniform(self, shape, low: float, high: float) -> torch.Tensor:
        """Log-uniform draws in [low, high] (one uniform draw)."""
        return self.uniform(shape, math.log(low), math.log(high)).exp()

    def integers(self, shape, low: int, high: int) -> torch.Tensor:
        """Uniform integers in [low, high], both included."""
        draw, full = self._shape(shape)
        return torch.randint(int(low), int(high) + 1, draw, generator=self.generator, device=self.device).expand(full)

    def normal(self, shape) -> torch.Tensor:
        draw, full = self._shape(shape)
        return torch.randn(draw, generator=self.generator, device=self.device).expand(full)

    def complex_normal(self, shape) -> torch.Tensor:
        draw, full = self._shape(shape)
        return torch.randn(draw, generator=self.generator, device=self.device, dtype=torch.complex64).expand(full)

    def categorical(self, n: int, weights: torch.Tensor) -> torch.Tensor:
        draw, full = self._shape(n)
        drawn = torch.multinomial(weights.expand(draw[0], -1), 1, replacement=True, generator=self.generator)
        return drawn[:, 0].expand(full)

    def choose(self, n: int, chosen: tuple[str, ...], known: tuple[str, ...]) -> torch.Tensor:
        """A code of ``known`` per clip, drawn uniformly among the ``chosen`` names."""
        codes = torch.tensor([known.index(name) for name in chosen], device=self.device)
        return codes[self.integers(n, 0, len(codes) - 1)]
