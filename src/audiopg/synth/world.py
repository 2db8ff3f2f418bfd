"""The procedural world: draws every ground-truth factor of a batch of clips, then has them rendered.

Every draw goes through one ``Randomness`` in a fixed order, so the same seed and device give the same clips.
docs/world.md describes the factors, the scenes' layout and how fixed factors are set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from audiopg.synth.config import WorldConfig
from audiopg.synth.registry import SOURCES
from audiopg.synth.render import EnabledSource, Renderer
from audiopg.synth.rng import Randomness

CPU_CHUNK_SAMPLES = 8 * 163840  # audio samples rendered at a time on a CPU (8 clips of 10.24 s)


@dataclass
class ClipBatch:
    """Audio (B, samples) in [-1, 1] and its ground-truth factors, one tensor row per clip."""

    audio: torch.Tensor
    factors: dict[str, torch.Tensor]
    config: WorldConfig

    def __len__(self) -> int:
        return self.audio.shape[0]

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able dict per clip: categories as names, per-event lists cut to the clip's
        event count, per-partial lists to its partial count; factors that do not apply to the
        clip (NaN or -1, e.g. f0 of a noise clip) are left out."""
        names = self.config.source_names
        categories = {k: v for s in SOURCES.values() for k, v in s.categories.items()}
        cols = {k: v.detach().cpu().tolist() for k, v in self.factors.items()}
        out = []
        categories.update({f"scene_{k}": v for k, v in categories.items()})
        categories["scene_source"] = names
        for i in range(len(self)):
            rec: dict[str, Any] = {"source": names[int(cols["source"][i])]}
            for key, col in cols.items():
                v = col[i]
                if key == "source":
                    continue
                if isinstance(v, list):
                    if key.startswith("scene_"):  # (slots, ...): the clip's sources, each trimmed like the main one's
                        v = v[: int(cols["scene_count"][i])]
                        if not (v and isinstance(v[0], list)):
                            pass
                        elif key.startswith(("scene_event_", "scene_transient")):
                            v = [x[: int(c)] for x, c in zip(v, cols["scene_event_count"][i])]
                        elif key.startswith("scene_partial_") and "scene_partials" in cols:
                            v = [x[: max(int(c), 0)] for x, c in zip(v, cols["scene_partials"][i])]
                    elif key.startswith(("event_", "transient")):
                        v = v[: int(cols["event_count"][i])]
                    elif key.startswith("partial_"):
                        v = v[: max(int(cols["partials"][i]), 0)]
                v = _clean(v, categories.get(key))
                if v is None or (isinstance(v, list) and all(x is None for x in v)) or v == -1:
                    continue
                rec[key] = v
            out.append(rec)
        return out


def _clean(v, names=None):
    if isinstance(v, list):
        return [_clean(x, names) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if names is not None:
        return None if v < 0 else names[int(v)]
    if isinstance(v, float):
        return round(v, 6)
    return v


class World:
    """A batched procedural sound world on one device.

    >>> world = World(load_world_config("paper"))
    >>> batch = world.sample(8, torch.Generator().manual_seed(0))
    >>> batch.audio.shape, batch.factors["f0"].shape
    """

    def __init__(self, config: WorldConfig, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.source_codes = {name: i for i, name in enumerate(config.source_names)}
        self.sources = [EnabledSource(self.source_codes[name], name, SOURCES[name], cfg)
                        for name, cfg in config.sources.items() if cfg.enabled and cfg.weight > 0]
        weights = torch.zeros(len(config.source_names))
        for code, _, _, cfg in self.sources:
            weights[code] = cfg.weight
        self.source_weights = (weights / weights.sum()).to(self.device)
        self.enabled_codes = torch.tensor([s.code for s in self.sources], device=self.device)
        self.num_samples = config.num_samples
        self.slots = config.scene.slots  # source slots per clip (1: no scene)
        self.renderer = Renderer(config, self.sources, self.device)

    # ------------------------------------------------------------------ public API
    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def sample(self, n: int, generator: torch.Generator | int | None = None,
               fixed: Mapping[str, Any] | None = None, shared: bool = False) -> ClipBatch:
        """Draw ``n`` clips.  ``fixed`` holds factors to impose (scalars, names for
        categories, or per-clip tensors); ``shared=True`` makes all clips share
        every other factor and all render noise (for sweeps)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if generator is None or isinstance(generator, int):
            generator = self.generator(0 if generator is None else generator)
        if generator.device != self.device:
            raise ValueError(f"generator is on {generator.device}, the world on {self.device}")
        rng = Randomness(generator, shared=shared)
        factors = self.sample_factors(n, rng, fixed or {})
        chunk = max(1, CPU_CHUNK_SAMPLES // self.num_samples) if self.device.type == "cpu" else n
        if n <= chunk:
            audio = self.renderer.render(factors, rng)
        else:  # on a CPU, a few clips at a time keep the working set in cache (several times faster)
            parts = [{k: v[i:i + chunk] for k, v in factors.items()} for i in range(0, n, chunk)]
            audio = torch.cat([self.renderer.render(part, rng) for part in parts])
            factors = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
        return ClipBatch(audio=audio, factors=factors, config=self.config)

    def sweep(self, factor: str, values, seed: int = 0, fixed: Mapping[str, Any] | None = None) -> ClipBatch:
        """One clip's factors repeated, with ``factor`` set to each of ``values`` in turn."""
        values = torch.as_tensor(values, device=self.device)
        return self.sample(len(values), self.generator(seed), fixed={**(fixed or {}), factor: values}, shared=True)

    # ------------------------------------------------------------------ factors
    def sample_factors(self, n: int, rng: Randomness, fixed: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The main source (its type, factors and events), the clip's post-processing, then (only where
        switched on) the scene's further sources, the room and the distances, in this order of draws."""
        cfg = self.config
        f = self._sample_slot(n, rng, fixed, 0)
        slot_keys = list(f)  # per-source factors: every slot of a scene has its own
        f.update(self._sample_post(n, rng))
        slots = [f]
        if self.slots > 1:
            f.update(self._sample_scene(n, rng))
            self._override(f, fixed, "scene_start", n)  # before the slots' events, which follow it
            for s in range(1, self.slots):
                slots.append(self._sample_slot(n, rng, fixed, s, start=f["scene_start"][:, s]))
        if cfg.room.enabled:
            f.update(self._sample_room(n, rng))
        if cfg.distance.enabled:
            dist = rng.log_uniform((n, self.slots), *cfg.distance.distance)
            for s, fs in enumerate(slots):
                fs["distance"] = dist[:, s]
            slot_keys.append("distance")
        per_slot = {f"scene_{k}" for k in slot_keys} if self.slots > 1 else set()
        for key in fixed:  # every slot's factor first, then the main source's and the clip's
            if key in per_slot and key != "scene_source":
                for s, fs in enumerate(slots):
                    self._override_slot(fs, fixed, key, s, n)
        for key in fixed:
            if key != "source" and key not in per_slot:
                self._override(f, fixed, key, n)
        for fs in slots:
            self._derive_events(fs)
        if self.slots > 1:
            self._gather_scene(f, slots, slot_keys)
        if cfg.room.enabled:
            where = f["distance"] if cfg.distance.enabled else torch.full_like(f["rt60"], cfg.distance.reference)
            drr = 20 * torch.log10(f["critical_distance"] / where)
            f["drr_db"] = torch.where(torch.isnan(f["rt60"]), torch.full_like(drr, math.nan), drr)  # NaN: no room
        return f

    def _sample_slot(self, n: int, rng: Randomness, fixed: Mapping[str, Any], slot: int,
                     start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One source of every clip: its type, its own factors and its events (from ``start`` on)."""
        f: dict[str, torch.Tensor] = {}
        f["source"] = rng.categorical(n, self.source_weights)
        if self.slots > 1 and "scene_source" in fixed:
            self._override_slot(f, fixed, "scene_source", slot, n)
        if slot == 0:
            self._override(f, fixed, "source", n)
        for code, name, source, scfg in self.sources:
            drawn = source.sample(scfg, n, rng)
            mine = f["source"] == code
            for key, value in drawn.items():
                fill = source.factor_fill.get(key, math.nan)
                if key not in f:
                    f[key] = torch.full_like(value, fill, dtype=value.dtype)
                elif f[key].shape != value.shape:
                    raise ValueError(f"source {name!r} gives factor {key!r} another shape than an earlier source")
                m = mine.view(-1, *([1] * (value.dim() - 1)))
                f[key] = torch.where(m, value, f[key])
        f.update(self._sample_events(n, rng, start))
        return f

    def _sample_scene(self, n: int, rng: Randomness) -> dict[str, torch.Tensor]:
        sc, S = self.config.scene, self.slots
        count = rng.integers(n, *sc.sources_per_clip)
        latest = self.config.seconds - self.config.events.min_seconds  # room for one event after the start
        start = (rng.uniform((n, S), *sc.onset) * self.config.seconds).clamp_max(latest)
        level = rng.uniform((n, S), *sc.level_db)
        main = torch.arange(S, device=self.device) == 0  # the main source: from the start, the 0 dB reference
        return {"scene_count": count, "scene_start": torch.where(main, 0.0, start),
                "scene_level_db": torch.where(main, 0.0, level)}

    def _sample_room(self, n: int, rng: Randomness) -> dict[str, torch.Tensor]:
        rm = self.config.room
        apply = rng.uniform(n) < rm.probability
        rt60 = rng.log_uniform(n, *rm.rt60)
        distance = rng.log_uniform(n, *rm.critical_distance)
        nan = torch.full_like(rt60, math.nan)
        return {"rt60": torch.where(apply, rt60, nan), "critical_distance": torch.where(apply, distance, nan)}

    def _gather_scene(self, f: dict[str, torch.Tensor], slots: list[dict[str, torch.Tensor]],
                      slot_keys: list[str]) -> None:
        """``scene_k`` (n, S, ...) from every slot's factor ``k``; silent slots get fill values."""
        S = self.slots
        count = f["scene_count"]
        fills = {k: v for s in SOURCES.values() for k, v in s.factor_fill.items()}
        for key in slot_keys:
            parts = []
            for s, fs in enumerate(slots):
                v = fs[key]
                if v.dtype == torch.bool:
                    fill = False
                elif key == "event_count":
                    fill = 0
                else:
                    fill = fills.get(key, -1 if not v.dtype.is_floating_point else math.nan)
                off = (count <= s).view(-1, *([1] * (v.dim() - 1)))
                parts.append(torch.where(off, torch.full_like(v, fill), v))
            f[f"scene_{key}"] = torch.stack(parts, 1)
        slot = torch.arange(S, device=self.device)[None, :]
        active = slot < count[:, None]
        nan = torch.full(active.shape, math.nan, device=self.device)
        main = slot == 0  # the main source starts the clip and is the level reference, even where fixed otherwise
        f["scene_start"] = torch.where(active, torch.where(main, 0.0, f["scene_start"]), nan)
        f["scene_level_db"] = torch.where(active, torch.where(main, 0.0, f["scene_level_db"]), nan)
        first = f["scene_event_onset"].nan_to_num(math.inf).amin(-1)
        f["scene_onset"] = torch.where(active, first, nan)

    def _sample_events(self, n: int, rng: Randomness, start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        ev, tr = self.config.events, self.config.transient
        E = int(ev.count[1])
        length = self.config.seconds
        count = rng.integers(n, *ev.count)
        if start is None:
            longest = torch.clamp(length / count.float(), min=ev.min_seconds, max=length)[:, None]
            duration = ev.min_seconds + (longest - ev.min_seconds) * rng.uniform((n, E))
            onset = (length - duration) * rng.uniform((n, E))
        else:  # a later source of a scene: its events lie between ``start`` and the clip's end
            window = (length - start)[:, None]
            longest = torch.minimum((window / count.float()[:, None]).clamp_min(ev.min_seconds), window)
            duration = ev.min_seconds + (longest - ev.min_seconds) * rng.uniform((n, E))
            onset = start[:, None] + (window - duration) * rng.uniform((n, E))
        out = {
            "event_count": count,
            "event_onset": onset,
            "event_duration": duration,
            "event_attack": rng.uniform((n, E), *ev.attack),
            "event_decay": rng.uniform((n, E), *ev.decay),
            "event_sustain": rng.uniform((n, E), *ev.sustain),
            "event_release": rng.uniform((n, E), *ev.release),
            "event_level_db": rng.uniform((n, E), *ev.level_db),
        }
        present = rng.uniform((n, E)) < (tr.probability if tr.enabled else 0.0)
        out["transient"] = present
        out["transient_seconds"] = rng.uniform((n, E), *tr.seconds)
        out["transient_level"] = rng.uniform((n, E), *tr.level)
        return out

    def _sample_post(self, n: int, rng: Randomness) -> dict[str, torch.Tensor]:
        cfg = self.config
        lp, bg = cfg.lowpass, cfg.background
        apply = rng.uniform(n) < (lp.probability if lp.enabled else 0.0)
        cutoff = rng.uniform(n, *lp.cutoff)
        level = rng.uniform(n, *bg.level)
        return {
            "cutoff": torch.where(apply, cutoff, torch.full_like(cutoff, math.nan)),
            "noise_level": level if bg.enabled else torch.zeros_like(level),
            "signal_peak_db": rng.uniform(n, *cfg.signal_peak_db),
        }

    def _override(self, f: dict, fixed: Mapping[str, Any], key: str, n: int) -> None:
        if key not in fixed:
            return
        if key not in f:
            raise KeyError(f"cannot fix factor {key!r}: not a factor of this world "
                           f"(factors: {', '.join(sorted(f))})" if f else f"unknown factor {key!r}")
        value = fixed[key]
        ref = f[key]
        if isinstance(value, str):
            value = self._category_code(key, value)
        value = torch.as_tensor(value, device=self.device)
        if value.dim() == 1 and ref.dim() == 2 and value.shape[0] == n:
            value = value[:, None]
        try:
            f[key] = torch.broadcast_to(value.to(ref.dtype), ref.shape).clone()
        except RuntimeError:
            raise ValueError(f"fixed factor {key!r}: shape {tuple(value.shape)} "
                             f"does not fit {tuple(ref.shape)}") from None
        if key == "source":
            if not torch.isin(f[key], self.enabled_codes).all():
                raise ValueError(f"fixed source {fixed[key]!r} is switched off in this world")

    def _override_slot(self, f: dict, fixed: Mapping[str, Any], key: str, slot: int, n: int) -> None:
        """Set factor ``key[6:]`` of one slot from a fixed ``scene_*`` value broadcast to (n, S, ...)."""
        own = key[len("scene_"):]
        ref = f[own]
        value = fixed[key]
        if isinstance(value, str):
            value = self._category_code(key, value)
        value = torch.as_tensor(value, device=self.device)
        try:
            value = torch.broadcast_to(value.to(ref.dtype), (n, self.slots, *ref.shape[1:]))
        except RuntimeError:
            raise ValueError(f"fixed factor {key!r}: shape {tuple(value.shape)} does not fit "
                             f"{(n, self.slots, *ref.shape[1:])}") from None
        f[own] = value[:, slot].clone()
        if own == "source":
            if not torch.isin(f[own], self.enabled_codes).all():
                raise ValueError(f"fixed {key} {fixed[key]!r} holds a source that is switched off in this world")

    def _category_code(self, key: str, name: str) -> int:
        if key.startswith("scene_"):
            key = key[len("scene_"):]
        if key == "source":
            if name not in self.source_codes:
                raise ValueError(f"unknown source {name!r} (world has: {', '.join(self.source_codes)})")
            return self.source_codes[name]
        for source in SOURCES.values():
            if key in source.categories:
                if name not in source.categories[key]:
                    raise ValueError(f"unknown {key} {name!r} (known: {', '.join(source.categories[key])})")
                return source.categories[key].index(name)
        raise ValueError(f"factor {key!r} takes numbers, not names")

    def _derive_events(self, f: dict[str, torch.Tensor]) -> None:
        """Snap times to the control grid, mark unused event slots, re-reference levels."""
        E = f["event_onset"].shape[1]
        step = self.renderer.hop / self.config.sample_rate  # the renderer's control grid
        length = self.config.seconds
        dur = torch.clamp(torch.round(f["event_duration"] / step) * step, min=step, max=length)
        onset = torch.clamp(torch.round(f["event_onset"] / step) * step, min=0.0)
        onset = torch.minimum(onset, torch.floor((length - dur) / step) * step)
        f["event_duration"], f["event_onset"] = dur, onset
        for key in ("event_attack", "event_decay", "event_release"):  # segment edges on the grid too
            f[key] = torch.clamp(torch.round(f[key] * dur / step), min=1.0) * step / dur
        over = (f["event_attack"] + f["event_decay"] + f["event_release"] - 1).clamp_min(0)
        f["event_decay"] = f["event_decay"] - over
        active = torch.arange(E, device=self.device)[None, :] < f["event_count"][:, None]
        level = torch.where(active, f["event_level_db"], torch.full_like(f["event_level_db"], -math.inf))
        f["event_level_db"] = level - level.amax(1, keepdim=True)
        f["transient"] = f["transient"].bool() & active
        nan = torch.full_like(onset, math.nan)
        for key in ("event_onset", "event_duration", "event_attack", "event_decay", "event_sustain",
                    "event_release", "event_level_db", "transient_seconds", "transient_level"):
            f[key] = torch.where(active, f[key], nan)
        off = ~f["transient"]
        f["transient_seconds"] = torch.where(off, nan, f["transient_seconds"])
        f["transient_level"] = torch.where(off, nan, f["transient_level"])

