"""Factor heads: predict a clip's ground-truth world factors from the encoder's pooled visible tokens.

:func:`world_factor_targets` lists what a world can be asked (each target skipped where the world does not draw
it), with standardization constants taken from the world config, never from batch statistics;
:func:`factor_values` turns a batch's ``ClipBatch.factors`` into those targets; :class:`FactorHeads` scores them.
docs/training.md ("Objectives") lists the targets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from audiopg.model.vit import init_mae_weights
from audiopg.synth import WorldConfig
from audiopg.synth.registry import SOURCES

__all__ = ["FactorHeads", "FactorTarget", "factor_values", "world_factor_targets"]


@dataclass(frozen=True)
class FactorTarget:
    """One question about a clip: a standardized number (``classes == 0``) or a distribution over classes."""

    name: str  # the head's name and its metrics column (loss_factor_<name>)
    classes: int = 0  # 0: regression of (value - center) / scale; K: cross-entropy against a distribution over K
    center: float = 0.0  # regression: subtracted from the raw value
    scale: float = 1.0  # regression: the raw value's spread (std of a uniform draw over the world's range)
    norm: float = 1.0  # classification: log of the number of classes a clip can have (the loss of a uniform guess)


# Raw value of each regression target from a batch's factors (NaN or +-inf where it does not apply: not scored).
REGRESSIONS: dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]] = {
    "log2_f0": lambda f: torch.log2(f["f0"]),  # the main source's fundamental (tonal sources only)
    "log2_cutoff": lambda f: torch.log2(f["cutoff"]),  # the low-pass cutoff (low-passed clips only)
    "event_count": lambda f: f["event_count"].float(),  # the main source's events
    "snr_db": lambda f: f["signal_peak_db"] - 20 * torch.log10(f["noise_level"]),  # peak to background std
    "scene_count": lambda f: f["scene_count"].float(),  # sources sounding in the clip (scenes only)
    "log2_rt60": lambda f: torch.log2(f["rt60"]),  # the room's reverberation time (clips in a room only)
}


def _uniform(name: str, lo: float, hi: float) -> list[FactorTarget]:
    """A target standardized as a uniform draw over [lo, hi]; none when the range is a single value."""
    if not hi > lo or not math.isfinite(hi - lo):
        return []
    return [FactorTarget(name, center=(lo + hi) / 2, scale=(hi - lo) / math.sqrt(12))]


def _integers(name: str, lo: int, hi: int) -> list[FactorTarget]:
    """A target standardized as a uniform integer in [lo, hi]; none when lo == hi."""
    if hi <= lo:
        return []
    return [FactorTarget(name, center=(lo + hi) / 2, scale=math.sqrt(((hi - lo + 1) ** 2 - 1) / 12))]


def world_factor_targets(config: WorldConfig) -> tuple[FactorTarget, ...]:
    """The targets this world draws, in a fixed order; constants from its ranges (see :class:`FactorTarget`)."""
    enabled = {name: cfg for name, cfg in config.sources.items() if cfg.enabled and cfg.weight > 0}
    out: list[FactorTarget] = []
    if len(enabled) > 1:
        out.append(FactorTarget("source", classes=len(config.source_names), norm=math.log(len(enabled))))
    f0 = [cfg.f0 for cfg in enabled.values() if hasattr(cfg, "f0")]
    if f0:
        out += _uniform("log2_f0", min(math.log2(lo) for lo, _ in f0), max(math.log2(hi) for _, hi in f0))
    lp = config.lowpass
    if lp.enabled and lp.probability > 0:
        out += _uniform("log2_cutoff", math.log2(lp.cutoff[0]), math.log2(lp.cutoff[1]))
    out += _integers("event_count", int(config.events.count[0]), int(config.events.count[1]))
    bg = config.background
    if bg.enabled and bg.level[0] > 0:
        peak = config.signal_peak_db
        out += _uniform("snr_db", peak[0] - 20 * math.log10(bg.level[1]), peak[1] - 20 * math.log10(bg.level[0]))
    if config.scene.slots > 1:
        out += _integers("scene_count", *(int(c) for c in config.scene.sources_per_clip))
    if config.room.enabled and config.room.probability > 0:
        out += _uniform("log2_rt60", math.log2(config.room.rt60[0]), math.log2(config.room.rt60[1]))
    voice = enabled.get("voice")
    if voice is not None and len(voice.vowels) > 1:
        out.append(FactorTarget("vowels", classes=len(SOURCES["voice"].categories["vowels"]),
                                norm=math.log(len(voice.vowels))))
    return tuple(out)


def factor_values(targets: tuple[FactorTarget, ...], factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The targets of one batch from its world factors: regression ``(B,)`` float32 standardized, classification
    ``(B, K)`` float32 distributions (``source`` one-hot; ``vowels`` the share of each vowel among the main
    source's syllables); NaN (a NaN row) where a target does not apply to a clip."""
    out = {}
    for t in targets:
        if t.name == "source":
            out[t.name] = nn.functional.one_hot(factors["source"].long(), t.classes).float()
        elif t.name == "vowels":
            codes = factors["vowels"]  # (B, syllables), -1: no syllable (or not a voice)
            counts = nn.functional.one_hot(codes.clamp_min(0).long(), t.classes).float() * (codes >= 0)[..., None]
            counts = counts.sum(1)
            total = counts.sum(1, keepdim=True)
            out[t.name] = torch.where(total > 0, counts / total.clamp_min(1), math.nan)
        else:
            raw = REGRESSIONS[t.name](factors).float()
            out[t.name] = torch.where(torch.isfinite(raw), (raw - t.center) / t.scale, math.nan)
    return out


class FactorHeads(nn.Module):
    """One linear head per target on a pooled embedding ``(N, D)``; the loss of each and their mean.

    Regression: squared error of the standardized value; classification: cross-entropy against the target
    distribution divided by ``norm`` (1 for a uniform guess).  Each head averages over the clips it applies to;
    the mean is over the heads that apply to at least one clip of the batch.
    """

    def __init__(self, targets: tuple[FactorTarget, ...], dim: int):
        super().__init__()
        if not targets:
            raise ValueError("factor heads need at least one target")
        self.targets = targets
        self.heads = nn.ModuleDict({t.name: nn.Linear(dim, t.classes or 1) for t in targets})
        self.heads.apply(init_mae_weights)

    def forward(self, pooled: torch.Tensor, values: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses, used = {}, []
        for t in self.targets:
            out = self.heads[t.name](pooled).float()
            y = values[t.name]
            if t.classes:
                present = ~torch.isnan(y[:, 0])
                per_clip = -(y.nan_to_num() * out.log_softmax(-1)).sum(-1) / t.norm
            else:
                present = ~torch.isnan(y)
                per_clip = (out[:, 0] - y.nan_to_num()).pow(2)
            count = present.sum()
            losses[t.name] = (per_clip * present).sum() / count.clamp(min=1)
            used.append(count > 0)
        used_t = torch.stack(used).float()
        mean = (torch.stack(list(losses.values())) * used_t).sum() / used_t.sum().clamp(min=1)
        return mean, losses
