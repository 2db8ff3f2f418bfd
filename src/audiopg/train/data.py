"""Training data straight from the procedural world: clips -> log-mel -> normalized, on the training device.

No files and no loader workers: the world synthesizes every batch on the device that trains, and the
normalization statistics are measured on the same world at the start of every run (never taken from AudioSet).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch

from audiopg.audio.fbank import Fbank, FbankConfig, FbankStats
from audiopg.model.factor_heads import FactorTarget, factor_values
from audiopg.synth import World, WorldConfig

__all__ = ["Batch", "STATS_BATCH", "SynthSpectrograms", "compute_fbank_stats"]

STATS_BATCH = 64  # clips per draw when measuring the stats (fixed: the stats must not depend on batch_size)


class Batch(NamedTuple):
    spec: torch.Tensor  # (B, T, F) float32 normalized log-mel
    factors: dict[str, torch.Tensor]  # the factor heads' targets of the same clips (empty without targets)


class SynthSpectrograms:
    """Normalized log-mel batches ``(B, T, F)`` float32 from the procedural world, on one device.

    ``T`` is ``fbank_config.target_frames`` (the model's ``num_frames``; clips are
    cropped or padded with each clip's mean frame) and ``F`` its ``num_mel_bins``.

    With ``targets`` (:func:`~audiopg.model.factor_heads.world_factor_targets`), :meth:`draw` also returns the
    clips' factor targets, taken from the factors the world drew for them (no further random draw).

    >>> data = SynthSpectrograms(world_cfg, FbankConfig(target_frames=256), stats, "cpu")
    >>> x = data.batch(64, torch.Generator().manual_seed(0))   # (64, 256, 128)
    """

    def __init__(self, world_config: WorldConfig, fbank_config: FbankConfig, stats: FbankStats,
                 device: str | torch.device = "cpu", targets: tuple[FactorTarget, ...] = ()):
        if fbank_config.sample_rate != world_config.sample_rate:
            raise ValueError(
                f"fbank sample_rate {fbank_config.sample_rate} differs from the world's {world_config.sample_rate}"
            )
        self.device = torch.device(device)
        self.world = World(world_config, self.device)
        self.fbank = Fbank(fbank_config).to(self.device)
        self.fbank_config = fbank_config
        self.stats = stats
        self.targets = targets

    @property
    def world_config(self) -> WorldConfig:
        return self.world.config

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the data's device, seeded."""
        return torch.Generator(device=self.device).manual_seed(int(seed))

    @torch.no_grad()
    def log_mel(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Un-normalized log-mel ``(n, T, F)`` of ``n`` fresh clips."""
        return self.fbank(self.world.sample(n, generator).audio)

    @torch.no_grad()
    def batch(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Normalized log-mel ``(n, T, F)`` float32: ``(x - mean) / (2 std)`` with the world's stats."""
        return self.draw(n, generator).spec

    @torch.no_grad()
    def draw(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` fresh clips: their normalized log-mel (as :meth:`batch`) and factor targets (as ``targets``)."""
        clips = self.world.sample(n, generator)
        spec = self.stats.normalize(self.fbank(clips.audio)).float().contiguous()
        return Batch(spec, factor_values(self.targets, clips.factors) if self.targets else {})


@torch.no_grad()
def compute_fbank_stats(
    world_config: WorldConfig,
    fbank_config: FbankConfig,
    n_clips: int = 512,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = STATS_BATCH,
) -> FbankStats:
    """Global mean and standard deviation of the log-mel values of ``n_clips`` clips of the world.

    The clips come from ``torch.Generator(device).manual_seed(seed)``, drawn
    ``batch_size`` at a time (so seed, batch size and device fix the clips); sums
    are accumulated in float64.  Statistics are taken over the frames the filterbank
    actually computes: ``fbank_config.target_frames`` is ignored, so padded frames
    (copies of a clip's mean) do not shrink the std.
    """
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    world = World(world_config, device)
    fbank = Fbank(dataclasses.replace(fbank_config, target_frames=None)).to(device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    total = torch.zeros((), dtype=torch.float64, device=device)
    total_sq = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    done = 0
    while done < n_clips:
        n = min(batch_size, n_clips - done)
        x = fbank(world.sample(n, generator).audio).double()
        total += x.sum()
        total_sq += x.square().sum()
        count += x.numel()
        done += n
    mean = (total / count).item()
    var = max((total_sq / count).item() - mean * mean, 0.0)
    std = math.sqrt(var)
    if not std > 0:
        raise ValueError("log-mel values of the world have zero variance; the world config makes only silence")
    return FbankStats(mean=mean, std=std)
