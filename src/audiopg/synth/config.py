"""Configuration of the procedural world: every range and probability in one frozen dataclass.

``WorldConfig`` nests one small dataclass per stage (events, transients, low-pass, background, and the scene,
room and distance stages, off unless a preset switches them on) and maps every source name of ``SOURCES`` it
uses to that source's config dataclass.  Presets (``presets/*.yaml``) state only where they differ from these
defaults; ``load_world_config`` takes a preset name or a YAML/JSON path and ``key.sub=value`` overrides.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import audiopg.synth.sources  # noqa: F401  (importing it registers the built-in source types in SOURCES)
from audiopg.core.config import (
    check_interval,
    check_probability,
    check_range,
    from_dict,
    merge_overrides,
    read_mapping,
    to_dict,
)
from audiopg.core.errors import ConfigError
from audiopg.synth.registry import SOURCES

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class EventConfig:
    count: tuple[int, int] = (1, 5)  # events per clip, uniform integer in [min, max]
    min_seconds: float = 0.5  # shortest event; the longest is clip length / event count
    attack: tuple[float, float] = (0.01, 0.3)  # attack time as a fraction of the event
    decay: tuple[float, float] = (0.1, 0.4)  # decay time as a fraction of the event
    sustain: tuple[float, float] = (0.3, 0.9)  # sustain level as a fraction of the attack peak
    release: tuple[float, float] = (0.1, 0.3)  # release time as a fraction of the event
    level_db: tuple[float, float] = (-20.0, 0.0)  # event levels before re-referencing to the loudest (dB)

    def __post_init__(self):
        check_interval("events.count", self.count, 1, 64)
        if any(int(c) != c for c in self.count):
            raise ConfigError("events.count", f"expected whole numbers, got {self.count}")
        check_range("events.min_seconds", self.min_seconds, 0.0)
        if self.min_seconds <= 0:
            raise ConfigError("events.min_seconds", "must be > 0")
        for name in ("attack", "decay", "release"):
            check_interval(f"events.{name}", getattr(self, name), 0.0, 1.0)
        check_interval("events.sustain", self.sustain, 0.0, 1.0)
        check_interval("events.level_db", self.level_db, -120.0, 0.0)
        if self.attack[1] + self.decay[1] + self.release[1] > 1.0 + 1e-9:
            raise ConfigError("events", "attack, decay and release maxima must add up to at most 1 (one event)")
        if self.attack[0] <= 0 or self.release[0] <= 0:
            raise ConfigError("events.attack" if self.attack[0] <= 0 else "events.release", "minimum must be > 0")


@dataclass(frozen=True)
class TransientConfig:
    enabled: bool = True  # add a noise burst at event onsets
    probability: float = 0.6  # chance that an event starts with a burst
    seconds: tuple[float, float] = (0.01, 0.1)  # burst length
    level: tuple[float, float] = (0.5, 2.0)  # burst RMS relative to its event's RMS

    def __post_init__(self):
        check_probability("transient.probability", self.probability)
        check_interval("transient.seconds", self.seconds, 1e-4, 10.0)
        check_interval("transient.level", self.level, 0.0)


@dataclass(frozen=True)
class LowpassConfig:
    enabled: bool = True  # spectral damping of the whole clip
    probability: float = 0.7  # chance that a clip is low-passed
    cutoff: tuple[float, float] = (200.0, 6000.0)  # 2nd-order Butterworth cutoff in Hz

    def __post_init__(self):
        check_probability("lowpass.probability", self.probability)
        check_interval("lowpass.cutoff", self.cutoff, 1.0)


@dataclass(frozen=True)
class BackgroundConfig:
    enabled: bool = True  # add white background noise (uniformly distributed samples)
    level: tuple[float, float] = (0.001, 0.02)  # its standard deviation (signal peak is 1 before it is added)

    def __post_init__(self):
        check_interval("background.level", self.level, 0.0, 10.0)


@dataclass(frozen=True)
class SceneConfig:
    sources_per_clip: tuple[int, int] = (1, 1)  # sources per clip, uniform integer; (1, 1): one, nothing drawn
    level_db: tuple[float, float] = (-12.0, 0.0)  # level of every further source relative to the main source (dB)
    onset: tuple[float, float] = (0.0, 0.5)  # start of further sources, fraction of the clip (capped: one event fits)

    def __post_init__(self):
        check_interval("scene.sources_per_clip", self.sources_per_clip, 1, 8)
        if any(int(c) != c for c in self.sources_per_clip):
            raise ConfigError("scene.sources_per_clip", f"expected whole numbers, got {self.sources_per_clip}")
        check_interval("scene.level_db", self.level_db, -120.0, 40.0)
        check_interval("scene.onset", self.onset, 0.0, 1.0)

    @property
    def slots(self) -> int:
        """Source slots of every clip (the most sources a clip can hold)."""
        return int(self.sources_per_clip[1])


@dataclass(frozen=True)
class RoomConfig:
    enabled: bool = False  # reverberate clips in a synthetic room
    probability: float = 1.0  # chance that a clip is in the room (else it stays dry)
    rt60: tuple[float, float] = (0.2, 1.5)  # reverberation time in s (60 dB decay), log-uniform
    critical_distance: tuple[float, float] = (0.5, 3.0)  # m: direct = reverberant level there, log-uniform

    def __post_init__(self):
        check_probability("room.probability", self.probability)
        check_interval("room.rt60", self.rt60, 0.01, 20.0)
        check_interval("room.critical_distance", self.critical_distance, 0.01, 1000.0)


@dataclass(frozen=True)
class DistanceConfig:
    enabled: bool = False  # place every source at a distance from the microphone
    distance: tuple[float, float] = (1.0, 10.0)  # m, log-uniform, one per source
    reference: float = 1.0  # m: the distance at which a source has its own level (amplitude ~ reference / distance)
    absorption_db: float = 0.1  # air absorption at 8 kHz in dB per m; it grows with frequency squared

    def __post_init__(self):
        check_interval("distance.distance", self.distance, 0.01, 10000.0)
        check_range("distance.reference", self.reference, 0.01, 10000.0)
        check_range("distance.absorption_db", self.absorption_db, 0.0, 100.0)


@dataclass(frozen=True)
class WorldConfig:
    sample_rate: int = 16000  # Hz
    seconds: float = 10.24  # clip length
    sources: dict[str, Any] = field(default_factory=dict)  # source name -> its config (see registry.py)
    events: EventConfig = EventConfig()  # temporal composition
    transient: TransientConfig = TransientConfig()  # onset noise bursts
    lowpass: LowpassConfig = LowpassConfig()  # spectral damping
    background: BackgroundConfig = BackgroundConfig()  # background noise
    scene: SceneConfig = SceneConfig()  # several sources per clip (off: one source)
    room: RoomConfig = RoomConfig()  # reverberation (off)
    distance: DistanceConfig = DistanceConfig()  # source distance: level drop and air absorption (off)
    signal_peak_db: tuple[float, float] = (0.0, 0.0)  # peak of the clip before background noise, dBFS
    peak_normalize: bool = True  # scale every finished clip to a peak of 1

    def __post_init__(self):
        check_range("sample_rate", self.sample_rate, 1000, 384000)
        check_range("seconds", self.seconds, 0.05, 600.0)
        check_interval("signal_peak_db", self.signal_peak_db, -120.0, 40.0)
        nyquist = self.sample_rate / 2
        if self.lowpass.enabled and self.lowpass.cutoff[1] >= nyquist:
            raise ConfigError("lowpass.cutoff",
                              f"max {self.lowpass.cutoff[1]} Hz must be below Nyquist ({nyquist:g} Hz)")
        if self.events.min_seconds > self.seconds:
            raise ConfigError("events.min_seconds",
                              f"{self.events.min_seconds} s is longer than the clip ({self.seconds} s)")
        if not self.sources:
            raise ConfigError("sources", "at least one source type is needed")
        for name, cfg in self.sources.items():
            if name not in SOURCES:
                raise ConfigError(f"sources.{name}", f"unknown source type (registered: {', '.join(SOURCES)})")
            if not isinstance(cfg, SOURCES[name].config_cls):
                raise ConfigError(f"sources.{name}", f"expected {SOURCES[name].config_cls.__name__}")
            SOURCES[name].check(cfg, self, f"sources.{name}")
        if not any(c.enabled and c.weight > 0 for c in self.sources.values()):
            raise ConfigError("sources", "every source type is switched off (enabled false or weight 0)")

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(self.sources)

    def replace(self, **changes) -> "WorldConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WorldConfig":
        data = dict(data)
        raw_sources = data.pop("sources", None)
        if raw_sources is None:
            raw_sources = {name: {} for name in SOURCES}
        if not isinstance(raw_sources, Mapping):
            raise ConfigError("sources", f"expected a mapping of source name -> settings, got {raw_sources!r}")
        sources = {}
        for name, settings in raw_sources.items():
            if name not in SOURCES:
                raise ConfigError(f"sources.{name}", f"unknown source type (registered: {', '.join(SOURCES)})")
            settings = {} if settings is None else settings
            if isinstance(settings, SOURCES[name].config_cls):
                sources[name] = settings
                continue
            if not isinstance(settings, Mapping):
                raise ConfigError(f"sources.{name}", f"expected a mapping of settings, got {settings!r}")
            sources[name] = from_dict(SOURCES[name].config_cls, settings, prefix=f"sources.{name}")
        return from_dict(cls, data | {"sources": sources})  # the built source configs pass through as they are


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_world_config(preset: str | Path = "paper", overrides: list[str] | tuple[str, ...] = ()) -> WorldConfig:
    """A preset name (``paper``) or a YAML/JSON path, with ``key.sub=value`` overrides applied."""
    path = Path(preset)
    if not path.suffix:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError("preset", f"unknown world preset {preset!r} (presets: {', '.join(list_presets())})")
    data = read_mapping(path)
    data = merge_overrides(data, list(overrides))
    try:
        return WorldConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(err.key, f"{str(err).split(': ', 1)[1]} (in {path})") from None
