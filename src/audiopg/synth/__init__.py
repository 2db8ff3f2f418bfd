"""The procedural sound world: sources, composition rules and their ground-truth factors."""
from audiopg.synth.config import (
    BackgroundConfig,
    EventConfig,
    LowpassConfig,
    TransientConfig,
    WorldConfig,
    list_presets,
    load_world_config,
)
from audiopg.synth.sources import SOURCES, Source, register_source
from audiopg.synth.world import ClipBatch, Randomness, World

__all__ = [
    "BackgroundConfig", "ClipBatch", "EventConfig", "LowpassConfig", "Randomness", "SOURCES", "Source",
    "TransientConfig", "World", "WorldConfig", "list_presets", "load_world_config", "register_source",
]
