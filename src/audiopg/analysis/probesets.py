"""Probe sets drawn from the procedural world, with their known factors as targets.

A :class:`ProbeSet` is audio (one clip per row, as long as the encoder's
window), the targets to decode from its embeddings, and a *group* per clip:
clips of one group must never sit on both sides of a train/test split.

* ``random``: every factor varies (independent draws of the world); each clip
  is its own group.
* sweeps (``sweep_<factor>``): ``bases`` base clips, each drawn once with
  ``World.sweep`` (every other factor, and every noise the renderer draws,
  shared), with one factor set to ``points`` values in turn.  The group is
  the base clip.  Only the varied factor is a target of a sweep.

Targets (``TARGETS``), all from the world's ground truth, NaN where a factor
does not apply to a clip (categorical: -1):

================  ==========  ==================================================================
``log2_f0``       continuous  log2 of the fundamental / FM carrier in Hz (harmonic, fm, pulse)
``event_level_db``continuous  level of the quietest event relative to the loudest, dB, as the world
                              measures it on the rendered events (clips with 2+ events)
``snr_db``        continuous  signal-to-background-noise ratio, dB (measured)
``level_db``      continuous  absolute clip level, RMS in dBFS, only in the ``level`` sweep, rendered
                              with peak normalization switched off (and embedded without it)
``fm_index``      continuous  FM modulation index (fm clips)
``log2_cutoff``   continuous  log2 of the low-pass cutoff in Hz (low-passed clips)
``event_count``   continuous  number of events
``source``        categorical source type
``pulse_shape``   categorical pulse waveform (pulse clips)
``noise_colour``  categorical noise colour (noise clips)
================  ==========  ==================================================================

Sweeps and their values (``points`` of each, the world's own ranges where it has them):

* ``f0``: log-spaced 50-2000 Hz; base clips cycle through harmonic, fm and pulse.
* ``event_level``: two events, the first at 0 dB and the second at ``v`` dB,
  ``v`` linear over the world's event-level range (e.g. -20..0 dB).
* ``snr``: background noise std log-spaced over the world's range.
* ``level``: signal peak linear over -30..0 dBFS with peak normalization off;
  the background noise is scaled with the signal, so the SNR is held fixed and
  only the absolute level changes.
* ``fm_index``: fm clips, index linear over the world's range.
* ``cutoff``: low-pass cutoff log-spaced over the world's range.
* ``event_count``: 1 .. the world's maximum.
* ``source``: every enabled source type.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from audiopg.synth.config import WorldConfig
from audiopg.synth.sources.basic import SOURCES
from audiopg.synth.world import World

__all__ = ["ProbeSet", "TARGETS", "SWEEPS", "make_probe_sets", "make_random_set", "make_sweep",
           "targets_from_factors", "world_config_for_encoder"]

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

LEVEL_RANGE_DB = (-30.0, 0.0)  # signal peak of the absolute-level sweep, dBFS
F0_RANGE_HZ = (50.0, 2000.0)
TONAL = ("harmonic", "fm", "pulse")


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
                counts = np.bincount(y[m].astype(int), minlength=len(self.classes.get(name, ()))) if m.any() else []
                out["targets"][name] = {"clips": int(m.sum()),
                                        "counts": {self.classes[name][i] if i < len(self.classes.get(name, ())) else str(i): int(c)
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
    from audiopg.synth.config import load_world_config

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
    """The ``TARGETS`` of a batch from its ground-truth factors (see the module docstring)."""
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


def sweep_values(name: str, cfg: WorldConfig, points: int) -> np.ndarray:
    """The values a sweep sets (before any per-clip adjustment)."""
    if name == "f0":
        lo, hi = F0_RANGE_HZ
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
    if name == "f0" and not any(s in enabled for s in TONAL):
        return "no tonal source (harmonic, fm, pulse) is enabled"
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
    """``bases`` base clips x the sweep's values (see the module docstring)."""
    why = sweep_available(name, cfg)
    if why:
        raise ValueError(f"sweep {name!r} is not possible in this world: {why}")
    target = SWEEPS[name]
    values = sweep_values(name, cfg, points)
    enabled = _enabled(cfg)
    tonal = [s for s in TONAL if s in enabled]
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
        batch = world.sweep(factor, torch.as_tensor(vals, dtype=dtype), seed=seed_b,
                            fixed={k: (v.to(world.device) if isinstance(v, torch.Tensor) else v) for k, v in fixed.items()})
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
        if name == "f0":
            n_bases = max(bases, 3 * ((bases + 2) // 3)) if len([s for s in TONAL if s in _enabled(cfg)]) > 1 else bases
        sets.append(make_sweep(name, cfg, n_bases, f0_points if name == "f0" else points, seed * 1000 + 17 * (i + 1), device))
    return sets, skipped
