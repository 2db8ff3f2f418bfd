"""The built-in source types, registered in ``SOURCES`` here and nowhere else.

Their order is the order of a WorldConfig's sources when a config names none.
"""
from audiopg.synth.registry import register_source
from audiopg.synth.sources.basic import FM, Harmonic, Noise, Pulse
from audiopg.synth.sources.modal import Modal
from audiopg.synth.sources.strings import KarplusStrong
from audiopg.synth.sources.textures import Glide, Granular, ModulatedNoise
from audiopg.synth.sources.voice import Voice

BUILT_IN_SOURCES = (Harmonic, FM, Pulse, Noise, Modal, KarplusStrong, Granular, ModulatedNoise, Glide, Voice)

for source_cls in BUILT_IN_SOURCES:
    register_source(source_cls)
