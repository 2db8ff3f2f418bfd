"""Probe sets drawn from the procedural world, with its ground-truth factors as targets.

A :class:`ProbeSet` is audio (one clip per row, as long as the encoder's window), the targets to decode and a
group per clip (clips of one group never straddle a split): the ``random`` set (every factor varies) and one
sweep per factor (base clips drawn once, one factor set to a grid of values in turn).  Every range comes from the
encoder's own world config.  Targets and sweeps are listed in docs/analysis.md.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from audiopg.synth import SOURCES, World, WorldConfig, load_world_config

__all__ = ["ProbeSet", "TARGETS", "SWEEPS", "make_probe_sets", "make_random_set", "make_sweep", "sweep_available",
           "sweep_values", "f0_range", "targets_from_factors", "world_config_for_encoder"]

CONTINUOUS = ("log2_f0", "event_level_db", "snr_db", "level_db", "fm_index", "log2_cutoff", "event_count")
CATEGORICAL = ("source", "pulse_shape", "noise_colour")
TARGETS: dict[str, str] = {**{k: "continuous" for k in CONTINUOUS}, **{k: "categorical" for k in CATEGORICAL}}

# sweep name -> the target it varies
SWEEPS: dict[str, str] = {
    "f0": "log2_f0",
    "event_level": "event_level_db",
    "snr": "snr_db",
    "level": "level_db",
    "fm_index": "fm_index",
    "cutoff": "log2_cutoff",
    "event_count": "event_count",
    "source": "source",
}

LEVEL_RANGE_DB = (-30.0, 0.0)  # signal peak of the absolute-level sweep, dBFS (the world's peak is normalized)


@dataclass
class ProbeSet:
    """Clips with known factors; ``targets[name]`` is (N,), float (NaN = n/a) or int (-1 = n/a)."""

    name: str
    audio: torch.Tensor  # (N, samples) on CPU
    sample_rate: int
    targets: dict[str, np.ndarray]
    groups: np.ndarray  # (N,) int: clips sharing a group never straddle a split
    varied: str | None = None  # the target a sweep varies (None for the random set)
    normalize: bool | None = None  # peak normalization when embedding (None = as the encoder's world)
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # categorical target -> names
    description: str = ""
    factors: dict[str, np.ndarray] = field(default_factory=dict)  # the world's raw factors of every clip

    def __len__(self) -> int:
        return int(self.audio.shape[0])

    def kind(self, target: str) -> str:
        return TARGETS[target]

    def valid(self, target: str) -> np.ndarray:
        """Clips where ``target`` applies."""
        y = self.targets[target]
        return y >= 0 if TARGETS[target] == "categorical" else np.isfinite(y)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clips": len(self), "groups": int(len(np.unique(self.groups))),
                               "varied": self.varied, "description": self.description,
                               "normalize": self.normalize, "targets": {}}
        for name, y in self.targets.items():
            m = self.valid(name)
            if TARGETS[name] == "categorical":
                classes = self.classes.get(name, ())
                counts = np.bincount(y[m].astype(int), minlength=len(classes)) if m.any() else []
                out["targets"][name] = {"clips": int(m.sum()),
                                        "counts": {classes[i] if i < len(classes) else str(i): int(c)
                                                   for i, c in enumerate(counts)}}
            else:
                out["targets"][name] = {"clips": int(m.sum()),
                                        "min": float(np.min(y[m])) if m.any() else None,
                                        "max": float(np.max(y[m])) if m.any() else None}
        return out


# ----------------------------------------------------------------------------- world and targets
def world_config_for_encoder(world: Mapping[str, Any] | WorldConfig | None, seconds: float,
                             sample_rate: int | None = None) -> WorldConfig:
    """The encoder's training world (its metadata dict, or the ``paper`` preset when absent) with
    clips of ``seconds`` at the encoder's rate."""
    if isinstance(world, WorldConfig):
        cfg = world
    elif world:
        cfg = WorldConfig.from_dict(world)
    else:
        cfg = load_world_config("paper")
    changes: dict[str, Any] = {"seconds": float(seconds)}
    if sample_rate is not None:
        changes["sample_rate"] = int(sample_rate)
    if cfg.events.min_seconds > seconds:
        changes["events"] = dataclasses.replace(cfg.events, min_seconds=float(seconds) / 2)
    return cfg.replace(**changes)


def _category_names(cfg: WorldConfig) -> dict[str, tuple[str, ...]]:
    names = {"source": tuple(cfg.source_names)}
    for source in SOURCES.values():
        names.update(source.categories)
    return names


def targets_from_factors(factors: Mapping[str, torch.Tensor], cfg: WorldConfig,
                         absolute_level: bool = False) -> dict[str, np.ndarray]:
    """The ``TARGETS`` of a batch from its ground-truth factors (see docs/analysis.md)."""
    f = {k: v.detach().cpu() for k, v in factors.items()}
    n = len(f["source"])
    out: dict[str, np.ndarray] = {}
    f0 = f["f0"].double().numpy()
    out["log2_f0"] = np.log2(np.where(f0 > 0, f0, np.nan))
    levels = f["event_level_db"].double().numpy()  # (n, E), NaN for unused slots, 0 for the loudest
    count = f["event_count"].numpy().astype(int)
    with np.errstate(all="ignore"):
        quietest = np.nanmin(np.where(np.isfinite(levels), levels, np.nan), axis=1)
    out["event_level_db"] = np.where(count >= 2, quietest, np.nan)
    snr = f["snr_db"].double().numpy()
    out["snr_db"] = np.where(np.isfinite(snr), snr, np.nan)
    out["level_db"] = f["rms_db"].double().numpy() if absolute_level else np.full(n, np.nan)
    out["fm_index"] = f["fm_index"].double().numpy() if "fm_index" in f else np.full(n, np.nan)
    cutoff = f["cutoff"].double().numpy()
    out["log2_cutoff"] = np.log2(np.where(cutoff > 0, cutoff, np.nan))
    out["event_count"] = count.astype(np.float64)
    out["source"] = f["source"].numpy().astype(np.int64)
    for key in ("pulse_shape", "noise_colour"):
        out[key] = f[key].numpy().astype(np.int64) if key in f else np.full(n, -1, dtype=np.int64)
    return out


# ----------------------------------------------------------------------------- the sets
def make_random_set(cfg: WorldConfig, clips: int, seed: int, device: str | torch.device = "cpu",
                    chunk: int = 128) -> ProbeSet:
    """``clips`` independent draws of the world (every factor varies)."""
    world = World(cfg, device)
    gen = world.generator(seed)
    audio, targets, raw = [], [], []
    for start in range(0, clips, chunk):
        batch = world.sample(min(chunk, clips - start), gen)
        audio.append(batch.audio.float().cpu())
        targets.append(targets_from_factors(batch.factors, cfg))
        raw.append(_raw(batch.factors))
    merged = {k: np.concatenate([t[k] for t in targets]) for k in targets[0]}
    merged.pop("level_db")  # peak-normalized world: no absolute level to decode
    return ProbeSet(
        name="random", audio=torch.cat(audio), sample_rate=cfg.sample_rate, targets=merged,
        groups=np.arange(clips), classes=_category_names(cfg),
        description=f"{clips} independent clips of the world, every factor varying",
        factors={k: np.concatenate([r[k] for r in raw]) for k in raw[0]},
    )


def _raw(factors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in factors.items()}


def _enabled(cfg: WorldConfig) -> list[str]:
    return [name for name, s in cfg.sources.items() if s.enabled and s.weight > 0]


def _tonal(cfg: WorldConfig) -> list[str]:
    """Enabled sources whose ``f0`` is the pitch of a periodic tone, in the world's order."""
    return [name for name in _enabled(cfg) if SOURCES[name].tonal]


def f0_range(cfg: WorldConfig) -> tuple[float, float]:
    """The world's f0 range: lowest to highest f0 of its enabled tonal sources' configs, Hz."""
    ranges = [cfg.sources[name].f0 for name in _tonal(cfg)]
    return float(min(lo for lo, _ in ranges)), float(max(hi for _, hi in ranges))


def sweep_values(name: str, cfg: WorldConfig, points: int) -> np.ndarray:
    """The values a sweep sets (before any per-clip adjustment)."""
    if name == "f0":
        lo, hi = f0_range(cfg)
        hi = min(hi, 0.45 * cfg.sample_rate)
        return np.geomspace(lo, hi, points)
    if name == "event_level":
        return np.linspace(cfg.events.level_db[0], 0.0, points)
    if name == "snr":
        lo, hi = cfg.background.level
        return np.geomspace(max(lo, 1e-5), max(hi, 2 * max(lo, 1e-5)), points)
    if name == "level":
        return np.linspace(*LEVEL_RANGE_DB, points)
    if name == "fm_index":
        return np.linspace(*cfg.sources["fm"].index, points)
    if name == "cutoff":
        lo, hi = cfg.lowpass.cutoff
        return np.geomspace(lo, min(hi, 0.45 * cfg.sample_rate), points)
    if name == "event_count":
        lo, hi = int(cfg.events.count[0]), int(cfg.events.count[1])
        return np.arange(lo, hi + 1, dtype=np.float64)
    if name == "source":
        return np.array([cfg.source_names.index(s) for s in _enabled(cfg)], dtype=np.float64)
    raise KeyError(f"unknown sweep {name!r} (sweeps: {', '.join(SWEEPS)})")


def sweep_available(name: str, cfg: WorldConfig) -> str | None:
    """None when the world supports the sweep, else why not."""
    enabled = _enabled(cfg)
    if name == "f0" and not _tonal(cfg):
        return "no tonal source (" + ", ".join(n for n, s in SOURCES.items() if s.tonal) + ") is enabled"
    if name == "fm_index" and "fm" not in enabled:
        return "the fm source is not enabled"
    if name == "snr" and not cfg.background.enabled:
        return "the background noise is switched off"
    if name == "event_level" and cfg.events.count[1] < 2:
        return "clips have at most one event"
    if name == "event_count" and cfg.events.count[0] == cfg.events.count[1]:
        return "the event count is fixed"
    if name == "source" and len(enabled) < 2:
        return "only one source type is enabled"
    return None


def make_sweep(name: str, cfg: WorldConfig, bases: int, points: int, seed: int,
               device: str | torch.device = "cpu") -> ProbeSet:
    """``bases`` base clips x the sweep's values (see docs/analysis.md)."""
    why = sweep_available(name, cfg)
    if why:
        raise ValueError(f"sweep {name!r} is not possible in this world: {why}")
    target = SWEEPS[name]
    values = sweep_values(name, cfg, points)
    enabled = _enabled(cfg)
    tonal = _tonal(cfg)
    rng = np.random.default_rng([int(seed), 7919])
    world_cfg = cfg
    if name == "level":
        world_cfg = cfg.replace(peak_normalize=False, signal_peak_db=LEVEL_RANGE_DB)
    world = World(world_cfg, device)
    audio, targets, groups, raw = [], [], [], []
    for b in range(bases):
        fixed: dict[str, Any] = {}
        vals: Any = values
        factor = {"f0": "f0", "event_level": "event_level_db", "snr": "noise_level", "level": "signal_peak_db",
                  "fm_index": "fm_index", "cutoff": "cutoff", "event_count": "event_count", "source": "source"}[name]
        if name == "f0":
            fixed["source"] = tonal[b % len(tonal)]
        elif name == "fm_index":
            fixed["source"] = "fm"
        elif name == "event_level":
            E = int(cfg.events.count[1])
            lv = np.zeros((len(values), E))
            lv[:, 1] = values
            lv[:, 2:] = math.nan
            vals = lv
            fixed["event_count"] = 2
        elif name == "level":
            lo, hi = cfg.background.level
            base_noise = float(np.exp(rng.uniform(np.log(max(lo, 1e-6)), np.log(max(hi, 1e-6)))))
            fixed["noise_level"] = torch.as_tensor(base_noise * 10 ** (values / 20), dtype=torch.float32)
        elif name == "source":
            vals = values.astype(np.int64)
        dtype = torch.int64 if name in ("source", "event_count") else torch.float32
        seed_b = int(rng.integers(0, 2**31 - 1))
        fixed = {k: (v.to(world.device) if isinstance(v, torch.Tensor) else v) for k, v in fixed.items()}
        batch = world.sweep(factor, torch.as_tensor(vals, dtype=dtype), seed=seed_b, fixed=fixed)
        audio.append(batch.audio.float().cpu())
        t = targets_from_factors(batch.factors, world_cfg, absolute_level=(name == "level"))
        targets.append({target: t[target]})
        groups.append(np.full(len(values), b))
        raw.append(_raw(batch.factors))
    merged = {target: np.concatenate([t[target] for t in targets])}
    descr = {
        "f0": "f0 log-spaced {lo:g}-{hi:g} Hz; base clips cycle through " + ", ".join(tonal),
        "event_level": "two events: the first at 0 dB, the second at {lo:g}..{hi:g} dB",
        "snr": "background noise std {lo:g}..{hi:g} (log-spaced)",
        "level": "signal peak {lo:g}..{hi:g} dBFS, peak normalization off, noise scaled along (fixed SNR)",
        "fm_index": "fm clips, modulation index {lo:g}..{hi:g}",
        "cutoff": "low-pass cutoff {lo:g}-{hi:g} Hz (log-spaced)",
        "event_count": "event count {lo:g}..{hi:g}",
        "source": "every enabled source type: " + ", ".join(enabled),
    }[name].format(lo=float(values.min()), hi=float(values.max()))
    return ProbeSet(
        name=f"sweep_{name}", audio=torch.cat(audio), sample_rate=cfg.sample_rate, targets=merged,
        groups=np.concatenate(groups), varied=target, normalize=False if name == "level" else None,
        classes=_category_names(cfg), description=f"{bases} base clips x {len(values)} values: {descr}",
        factors={k: np.concatenate([r[k] for r in raw]) for k in raw[0]},
    )


def make_probe_sets(cfg: WorldConfig, *, clips: int = 512, bases: int = 8, points: int = 8, f0_points: int = 12,
                    seed: int = 0, device: str | torch.device = "cpu",
                    sweeps: tuple[str, ...] | None = None) -> tuple[list[ProbeSet], dict[str, str]]:
    """The random set and every sweep the world supports; also {sweep: why it was skipped}."""
    sets = [make_random_set(cfg, clips, seed, device)]
    skipped: dict[str, str] = {}
    for i, name in enumerate(sweeps if sweeps is not None else SWEEPS):
        why = sweep_available(name, cfg)
        if why:
            skipped[name] = why
            continue
        n_bases = bases
        if name == "f0":  # as many base clips of every tonal source
            n_tonal = len(_tonal(cfg))
            n_bases = n_tonal * -(-bases // n_tonal)
        sets.append(make_sweep(name, cfg, n_bases, f0_points if name == "f0" else points, seed * 1000 + 17 * (i + 1),
                               device))
    return sets, skipped
