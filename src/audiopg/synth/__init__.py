"""The procedural sound world: sources, composition rules and their ground-truth factors (docs/world.md)."""
from audiopg.synth.config import (
    BackgroundConfig,
    DistanceConfig,
    EventConfig,
    LowpassConfig,
    RoomConfig,
    SceneConfig,
    TransientConfig,
    WorldConfig,
    list_presets,
    load_world_config,
)
from audiopg.synth.registry import SOURCES, Source, register_source
from audiopg.synth.rng import Randomness
from audiopg.synth.world import ClipBatch, World

__all__ = [
    "BackgroundConfig", "ClipBatch", "DistanceConfig", "EventConfig", "LowpassConfig", "Randomness", "RoomConfig",
    "SOURCES", "SceneConfig", "Source", "TransientConfig", "World", "WorldConfig", "list_presets",
    "load_world_config", "register_source",
]
