"""The procedural world: draws ground-truth factors for a batch of clips and renders them.

Everything is a batched tensor operation on the world's device; every random
draw goes through one ``torch.Generator``, in a fixed order, so the same seed
and device give the same clips.  A clip is made in this order:

1. a source signal over the whole clip (one source per clip, see ``sources.py``);
2. 1-N events, each an ADSR-enveloped stretch of the source at a random onset.
   Events take the source at the clip time where they sit (all sources are
   stationary, so this is the same sound as a cut from elsewhere) and may
   overlap.  Onsets and ADSR segment edges lie on a 1 ms grid, where the
   piecewise-linear envelopes are built and then interpolated, exactly;
3. an optional decaying white-noise burst at each event's onset (transient);
4. an optional 2nd-order Butterworth low-pass (bilinear transform, the
   filter ``scipy.signal.butter(2, cutoff)`` designs), applied as its frequency
   response to the periodic source (exact circular filtering, before its one
   inverse FFT) and to each burst (zero-padded FFT, exact).  Filtering the source
   before the envelope rather than the enveloped mix differs only where an
   envelope changes within the filter's impulse response (about 1 ms at the
   lowest cutoff), while attacks take 5 ms or more;
5. optionally (all off in ``paper``; see ``_compose``): further sources of a
   scene, each made by steps 1-4 on its own and mixed in at its relative level;
   every source at its own distance (level ~ 1 / distance, air absorption as a
   low-pass that deepens with distance); a synthetic room (an exponentially
   decaying noise impulse response of a drawn RT60) that reverberates the mix;
6. scaling to the signal peak (0 dBFS by default), white (uniform) background noise, and
   peak normalization.

Scenes.  With ``scene.sources_per_clip = [1, S]`` (S > 1) every clip has S source
slots, of which the first ``scene_count`` sound.  Slot 0 is the *main source*: its
factors keep the 1-D / per-event layout of a one-source world (``source``, ``f0``,
``event_onset`` (n, E), ...).  Every per-source factor ``k`` (the source type, its
own factors, its events and transients, its ``distance``) is also given for all
slots as ``scene_k`` of shape (n, S, ...), whose slot 0 equals ``k``; slots at or
beyond ``scene_count`` hold the fill values (NaN, -1, 0 events).  A further slot
``s`` starts at ``scene_start[:, s]`` (``scene.onset`` times the clip length, at
most the clip length less ``events.min_seconds``; 0 for the main source): its
events lie between that time and the clip's end.  ``scene_onset`` is each slot's
first event onset (when it starts sounding) and ``scene_level_db`` its level, the
RMS of its loudest event relative to the main source's loudest event (0 dB),
measured on the rendered sources (exact), before distance and room.  Fixing
``scene_k`` sets factor ``k`` of every slot (its value broadcast to (n, S, ...));
fixing ``k`` sets the main source's, after that.  Derived factors (``scene_onset``,
``drr_db``) are made after fixed factors are set.  With one slot (``paper``) no
scene factor exists and nothing extra is drawn; the room and distance factors
(``rt60``, ``critical_distance``, ``drr_db``; ``distance``) exist only where those
stages are switched on.

Relative intensity factors are exact by construction: every source has an RMS
of 1, so event ``e`` has RMS ``10 ** (event_level_db / 20)`` before the low-pass
(which scales all events of a clip alike).  ``snr_db`` and ``rms_db`` are
measured on the rendered signals.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from audiopg.synth.config import WorldConfig
from audiopg.synth.room import air_absorption_response, fft_size, room_impulse_response
from audiopg.synth.sources.basic import SOURCES, Partials, place_partials

CONTROL_RATE_HZ = 1000  # envelope control points per second (1 ms grid)
CPU_CHUNK_SAMPLES = 8 * 163840  # audio samples rendered at a time on a CPU (8 clips of 10.24 s)
AIR_PAD = 256  # zero padding for the air absorption's (zero-phase, sub-millisecond) impulse response


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
        return torch.multinomial(weights.expand(draw[0], -1), 1, replacement=True, generator=self.generator)[:, 0].expand(full)


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
        self.sources = [(name, SOURCES[name], cfg) for name, cfg in config.sources.items()
                        if cfg.enabled and cfg.weight > 0]
        self.source_codes = {name: i for i, name in enumerate(config.source_names)}
        weights = torch.zeros(len(config.source_names))
        for name, _, cfg in self.sources:
            weights[self.source_codes[name]] = cfg.weight
        self.source_weights = (weights / weights.sum()).to(self.device)
        self.num_samples = config.num_samples
        self.hop = max(1, round(config.sample_rate / CONTROL_RATE_HZ))  # samples per envelope control step
        self.control_steps = math.ceil((self.num_samples - 1) / self.hop)
        self.slots = config.scene.slots  # source slots per clip (1: no scene)
        self.composed = self.slots > 1 or config.room.enabled or config.distance.enabled

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
            audio = self.render(factors, rng)
        else:  # on a CPU, a few clips at a time keep the working set in cache (several times faster)
            parts = [{k: v[i:i + chunk] for k, v in factors.items()} for i in range(0, n, chunk)]
            audio = torch.cat([self.render(part, rng) for part in parts])
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
            d = cfg.distance.distance
            dist = rng.uniform((n, self.slots), math.log(d[0]), math.log(d[1])).exp()
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
        for name, source, scfg in self.sources:
            drawn = source.sample(scfg, n, rng)
            mine = f["source"] == self.source_codes[name]
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
        rt60 = rng.uniform(n, math.log(rm.rt60[0]), math.log(rm.rt60[1])).exp()
        distance = rng.uniform(n, math.log(rm.critical_distance[0]), math.log(rm.critical_distance[1])).exp()
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
            raise ValueError(f"fixed factor {key!r}: shape {tuple(value.shape)} does not fit {tuple(ref.shape)}") from None
        if key == "source":
            bad = ~torch.isin(f[key], torch.tensor([self.source_codes[s] for s, _, _ in self.sources], device=self.device))
            if bad.any():
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
            codes = torch.tensor([self.source_codes[s] for s, _, _ in self.sources], device=self.device)
            if not torch.isin(f[own], codes).all():
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
        step = self.hop / self.config.sample_rate
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

    # ------------------------------------------------------------------ rendering
    def render(self, f: dict[str, torch.Tensor], rng: Randomness) -> torch.Tensor:
        cfg = self.config
        n, N = f["source"].shape[0], self.num_samples
        x = torch.empty(n, N, device=self.device)
        self._render_sources(x, f, rng)
        event_rms = self._apply_events(x, f)
        self._add_transients(x, f, event_rms, rng)
        if self.composed:
            x = self._compose(x, f, event_rms, rng)
        x.mul_(10 ** (f["signal_peak_db"][:, None] / 20) / _peak(x))
        signal_power = _power(x)
        if cfg.background.enabled:
            # uniform white noise with standard deviation noise_level (as the published code adds;
            # its spectrum is as flat as Gaussian noise's, and it is cheaper to draw)
            half_width = math.sqrt(3.0) * f["noise_level"][:, None]
            noise = torch.addcmul(-half_width, rng.uniform((n, N)), 2 * half_width)
            f["snr_db"] = 10 * torch.log10(signal_power / _power(noise).clamp_min(1e-30))
            x.add_(noise)
        else:
            f["snr_db"] = torch.full_like(signal_power, math.inf)
        if cfg.peak_normalize:
            x.div_(_peak(x))
        f["rms_db"] = 10 * torch.log10(_power(x).clamp_min(1e-30))
        return x

    def _compose(self, x: torch.Tensor, f: dict[str, torch.Tensor], event_rms: torch.Tensor,
                 rng: Randomness) -> torch.Tensor:
        """The scene's further sources, distances and room on top of the main source ``x`` (n, N).

        Every further slot is rendered like the main source (source, events, transients, low-pass of
        the clip), for the clips where it sounds, and scaled so that its loudest event is
        ``scene_level_db`` relative to the main source's.  Each source then reaches the microphone
        directly, with amplitude ``reference / distance`` and air absorption (a zero-phase low-pass,
        -``absorption_db * distance * (f / 8 kHz)^2`` dB), while the room adds a diffuse reverberant
        field: the emitted sources' sum convolved with a unit-energy impulse response, at amplitude
        ``reference / critical_distance`` whatever the distance (Sabine's diffuse field), so that the
        direct-to-reverberant ratio is ``drr_db = 20 log10(critical_distance / distance)``.  Both
        paths are one linear convolution each (zero-padded FFTs); the tail past the clip is cut.
        """
        cfg = self.config
        n, N, sr = x.shape[0], x.shape[1], cfg.sample_rate
        parts = [(torch.arange(n, device=self.device), 0, x, torch.ones(n, device=self.device))]
        if self.slots > 1:
            slot_keys = [k for k in f if f"scene_{k}" in f]
            f["scene_event_level_db"][:, 0] = f["event_level_db"]
            loudest = event_rms.amax(1)
            for s in range(1, self.slots):
                idx = (f["scene_count"] > s).nonzero()[:, 0]
                if len(idx) == 0:
                    continue
                fs = {k: v[idx] for k, v in f.items() if not k.startswith("scene_")}
                fs.update({k: f[f"scene_{k}"][idx, s] for k in slot_keys})
                xs = torch.empty(len(idx), N, device=self.device)
                self._render_sources(xs, fs, rng)
                rms = self._apply_events(xs, fs)
                self._add_transients(xs, fs, rms, rng)
                f["scene_event_level_db"][idx, s] = fs["event_level_db"]
                gain = 10 ** (f["scene_level_db"][idx, s] / 20) * loudest[idx] / rms.amax(1).clamp_min(1e-12)
                parts.append((idx, s, xs, gain))
        if not (cfg.room.enabled or cfg.distance.enabled):
            for idx, _, xs, gain in parts[1:]:
                x.index_add_(0, idx, xs * gain[:, None])
            return x
        rows = torch.cat([p[0] for p in parts])
        slot = torch.cat([torch.full_like(p[0], p[1]) for p in parts])
        sig = torch.cat([p[2] * p[3][:, None] for p in parts])  # every sounding source, emitted (R, N)
        length = 0
        if cfg.room.enabled:
            longest = max(cfg.room.rt60[1], float(f["rt60"].nan_to_num(0.0).max()))
            length = int(math.ceil(longest * sr))  # the impulse response down by 60 dB
        M = fft_size(N + max(length, AIR_PAD))
        spec = torch.fft.rfft(sig, n=M)
        out = torch.zeros(n, M // 2 + 1, dtype=spec.dtype, device=self.device)
        if cfg.distance.enabled:
            dist = f["scene_distance"][rows, slot] if self.slots > 1 else f["distance"][rows]
            h = air_absorption_response(dist, M, sr, cfg.distance.absorption_db)
            out.index_add_(0, rows, spec * (h * (cfg.distance.reference / dist)[:, None]))
        else:
            out.index_add_(0, rows, spec)
        if cfg.room.enabled:
            ir = room_impulse_response(f["rt60"], length, sr, rng)  # (n, length), zero without a room
            room = (~torch.isnan(f["rt60"])).nonzero()[:, 0]
            if len(room):
                emitted = torch.zeros_like(out).index_add_(0, rows, spec)[room]
                gain = cfg.distance.reference / f["critical_distance"][room]
                out[room] += emitted * torch.fft.rfft(ir[room], n=M) * gain[:, None]
        return torch.fft.irfft(out, n=M)[:, :N].contiguous()

    def _render_sources(self, x: torch.Tensor, f: dict[str, torch.Tensor], rng: Randomness) -> None:
        """Each clip's source, RMS 1, low-passed where it has a cutoff, into ``x`` (n, N).

        Partials and spectra of all clips go into one spectrum, which is normalized (Parseval),
        filtered and inverted with one inverse FFT.  Every source is periodic over the clip, so filtering by the clip's own FFT is exact.
        """
        n, N, sr = x.shape[0], x.shape[1], self.config.sample_rate
        spec = torch.zeros(n, N // 2 + 1, dtype=torch.complex64, device=self.device)
        for name, source, scfg in self.sources:
            idx = (f["source"] == self.source_codes[name]).nonzero()[:, 0]
            if len(idx) == 0:
                continue
            out = source.render(scfg, _Rows(f, idx), N, sr, rng)
            if isinstance(out, Partials):
                place_partials(spec, idx, out, N, sr)
            elif out.is_complex():
                spec[idx] = out
            else:  # a time signal: its spectrum, to be normalized and filtered like the others
                spec[idx] = torch.fft.rfft(out, n=N)
        # (the norm of a complex tensor is ~50x slower on CPU than the norm of its real view)
        power = torch.linalg.vector_norm(torch.view_as_real(spec).reshape(n, -1), dim=1).square() * 2
        power = power - spec[:, 0].abs().square()
        if N % 2 == 0:
            power = power - spec[:, -1].abs().square()  # one-sided: all bins but DC, Nyquist count twice
        spec.mul_((N / power.clamp_min(1e-30).sqrt())[:, None])  # Parseval: RMS 1 over the clip
        rows = (~torch.isnan(f["cutoff"])).nonzero()[:, 0]
        if len(rows):
            spec[rows] = spec[rows] * butterworth2_response(f["cutoff"][rows], N, sr)
        torch.fft.irfft(spec, n=N, out=x)

    def _apply_events(self, x: torch.Tensor, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """Multiply the sources (n, N) by the sum of their events' ADSR envelopes, in place, and
        record every event's level, measured on the rendered event, relative to the loudest.

        Every breakpoint lies on the control grid, so the piecewise-linear envelopes are built
        exactly there from their slope changes (two cumulative sums) and interpolated linearly
        to audio rate.  An event's energy is the sum over control steps of the source's energy
        in the step times the mean square of the envelope's line over it, (a^2 + ab + b^2) / 3.
        """
        n, N = x.shape
        hop, steps = self.hop, self.control_steps
        env = self._envelopes(f, steps)  # (n, E, steps + 1)
        padded = F.pad(x, (0, steps * hop - N)) if steps * hop > N else x[:, : steps * hop]
        step_energy = torch.linalg.vector_norm(padded.reshape(n, steps, hop), dim=-1).double().square()
        a, b = env[..., :-1], env[..., 1:]
        energy = ((a * a + a * b + b * b) / 3 * step_energy[:, None, :]).sum(-1)
        level = 10 * torch.log10(energy.clamp_min(1e-30) / (f["event_duration"].double() * self.config.sample_rate))
        level = torch.where(torch.isnan(f["event_duration"]), torch.full_like(level, -math.inf), level)
        event_rms = (10 ** (level / 20)).float()  # absolute, before peak scaling
        level = (level - level.amax(1, keepdim=True)).float()
        f["event_level_db"] = torch.where(torch.isnan(f["event_duration"]), torch.full_like(level, math.nan), level)
        gain = env.sum(1).float()[:, None]
        x.mul_(F.interpolate(gain, size=steps * hop + 1, mode="linear", align_corners=True)[:, 0, :N])
        return event_rms

    def _envelopes(self, f: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
        """Every event's amplitude x ADSR envelope at the control points, (n, E, steps + 1), float64."""
        step = self.hop / self.config.sample_rate
        k0 = torch.round(f["event_onset"] / step)
        dur = torch.round(f["event_duration"] / step)
        ka = k0 + torch.round(f["event_attack"] * dur)
        kd = ka + torch.round(f["event_decay"] * dur)
        ke = k0 + dur
        kr = ke - torch.round(f["event_release"] * dur)
        amp = (10 ** (f["event_level_db"] / 20) / self.envelope_rms(f)).double()
        s = f["event_sustain"].double()
        up = amp / (ka - k0).double()
        down = amp * (1 - s) / (kd - ka).double().clamp_min(1)
        rel = amp * s / (ke - kr).double()
        where = torch.stack([k0, ka, kd, kr, ke], -1)  # (n, E, 5) breakpoints
        change = torch.stack([up, -up - down, down, -rel, rel], -1)  # slope changes there
        valid = ~torch.isnan(where) & ~torch.isnan(change)
        where = torch.where(valid, where, torch.zeros_like(where)).long().clamp_max(steps)
        change = torch.where(valid, change, torch.zeros_like(change))
        n, E = where.shape[:2]
        slope = torch.zeros(n, E, steps + 1, dtype=torch.float64, device=self.device)
        slope.scatter_add_(2, where, change).cumsum_(2)
        env = torch.zeros_like(slope)
        env[..., 1:] = slope[..., :-1].cumsum(2)
        return env.clamp_min_(0.0)

    @staticmethod
    def envelope_rms(f: dict[str, torch.Tensor]) -> torch.Tensor:
        """RMS of each event's ADSR envelope over the event (exact for the piecewise-linear shape)."""
        a, d, s, r = f["event_attack"], f["event_decay"], f["event_sustain"], f["event_release"]
        mean_sq = a / 3 + d * (1 + s + s * s) / 3 + s * s * (1 - a - d - r) + r * s * s / 3
        return mean_sq.clamp_min(1e-12).sqrt()

    def _add_transients(self, x: torch.Tensor, f: dict[str, torch.Tensor], event_rms: torch.Tensor,
                        rng: Randomness) -> None:
        """Add decaying white-noise bursts at event onsets, low-passed like their clip, in place."""
        tr = self.config.transient
        if not tr.enabled:
            return
        n, N, sr = x.shape[0], x.shape[1], self.config.sample_rate
        E = f["transient"].shape[1]
        T = int(math.ceil(tr.seconds[1] * sr))
        noise = rng.normal((n, E, T))
        if not f["transient"].any():
            return
        clip, slot = f["transient"].nonzero(as_tuple=True)  # only the bursts that exist
        j = torch.arange(T, device=self.device, dtype=torch.float32)
        length = (f["transient_seconds"][clip, slot] * sr)[:, None]
        burst = noise[clip, slot] * torch.exp(-5.0 * j / length.clamp_min(1.0)) * (j < length)  # -43 dB
        burst_rms = (burst.square().sum(-1, keepdim=True) / length.clamp_min(1.0)).sqrt().clamp_min(1e-12)
        target = (f["transient_level"][clip, slot] * event_rms[clip, slot])[:, None]
        burst = burst * (target / burst_rms)  # RMS over the burst = target
        cutoff = f["cutoff"][clip]
        L = T + _lowpass_tail(cutoff, sr)  # room for the low-pass tail of a burst (zero-padded FFT)
        rows = (~torch.isnan(cutoff)).nonzero()[:, 0]
        if len(rows):
            burst = F.pad(burst, (0, L - T))
            spec = torch.fft.rfft(burst[rows], n=L) * butterworth2_response(cutoff[rows], L, sr)
            burst[rows] = torch.fft.irfft(spec, n=L)
        pos = torch.round(f["event_onset"][clip, slot] * sr).long()[:, None] + torch.arange(burst.shape[1], device=self.device)
        inside = pos < N
        x.view(-1).index_add_(0, (clip[:, None] * N + pos)[inside], burst[inside])


class _Rows(dict):
    """The factors of some clips, indexed on first use (a source reads only a few of them)."""

    def __init__(self, factors: dict[str, torch.Tensor], idx: torch.Tensor):
        super().__init__()
        self._factors, self._idx = factors, idx

    def __missing__(self, key: str) -> torch.Tensor:
        value = self[key] = self._factors[key][self._idx]
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._factors

    def get(self, key, default=None):
        return self[key] if key in self._factors else default

    def keys(self):
        return self._factors.keys()

    def items(self):
        return ((k, self[k]) for k in self._factors)

    def __iter__(self):
        return iter(self._factors)

    def __len__(self) -> int:
        return len(self._factors)


def _lowpass_tail(cutoff: torch.Tensor, sample_rate: int) -> int:
    """Samples after which the impulse response of the lowest cutoff's low-pass has decayed by
    more than 300 dB (its envelope falls as exp(-2 pi 0.707 fc t)), rounded up to 256."""
    lowest = torch.nan_to_num(cutoff, nan=math.inf).min().item()
    if not math.isfinite(lowest):
        return 0
    samples = 35.0 * sample_rate / (2 * math.pi * math.sqrt(0.5) * lowest)
    return int(math.ceil(samples / 256) * 256)


def _peak(x: torch.Tensor) -> torch.Tensor:
    """Largest absolute value of each row (amax and amin are vectorized reductions; abs().amax
    would allocate a copy and the infinity norm is far slower on CPU)."""
    return torch.maximum(x.amax(1, keepdim=True), -x.amin(1, keepdim=True)).clamp_min(1e-12)


def _power(x: torch.Tensor) -> torch.Tensor:
    """Mean square of each row."""
    return torch.linalg.vector_norm(x, dim=1).square() / x.shape[1]


@functools.lru_cache(maxsize=16)
def _half_tan(n_fft: int, device: str) -> torch.Tensor:
    """tan(w / 2) at the rfft bins w = 2 pi k / n_fft (clamped: infinite at Nyquist)."""
    w = torch.arange(n_fft // 2 + 1, device=device, dtype=torch.float32) * (math.pi / n_fft)
    return torch.tan(w).clamp_max(1e6)


def butterworth2_response(cutoff: torch.Tensor, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Frequency response (m, n_fft//2+1) of 2nd-order Butterworth low-passes made by the bilinear
    transform with prewarping, i.e. the filters ``scipy.signal.butter(2, cutoff, fs=sample_rate)``
    designs.  With u = tan(w/2) / tan(pi cutoff / fs):  H = 1 / (1 - u^2 + j sqrt(2) u)."""
    t = _half_tan(n_fft, str(cutoff.device))
    u = t / torch.tan(math.pi * cutoff / sample_rate)[:, None]
    u2 = u * u
    den = 1 + u2 * u2  # |1 - u^2 + j sqrt(2) u|^2
    return torch.complex((1 - u2) / den, -math.sqrt(2) * u / den)
