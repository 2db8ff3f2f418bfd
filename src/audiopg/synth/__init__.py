"""The procedural sound world: sources, composition rules and their ground-truth factors."""
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
from audiopg.synth.sources import modal, strings, textures, voice  # noqa: F401  (register their source types)
from audiopg.synth.sources.basic import SOURCES, Source, register_source
from audiopg.synth.world import ClipBatch, Randomness, World

__all__ = [
    "BackgroundConfig", "ClipBatch", "DistanceConfig", "EventConfig", "LowpassConfig", "Randomness", "RoomConfig",
    "SOURCES", "SceneConfig", "Source", "TransientConfig", "World", "WorldConfig", "list_presets",
    "load_world_config", "register_source",
]
