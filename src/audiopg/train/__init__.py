"""Pre-training on the procedural world: config, on-device data, the training loop (docs/training.md).

The loop itself is :func:`audiopg.train.pretrain.pretrain` (not re-exported here, so that
``audiopg.train.pretrain`` stays the module).
"""
from audiopg.train.config import PRESET_DEFAULTS, PretrainConfig, build_pretrain_config
from audiopg.train.data import SynthSpectrograms, compute_fbank_stats

__all__ = ["PRESET_DEFAULTS", "PretrainConfig", "SynthSpectrograms", "build_pretrain_config", "compute_fbank_stats"]
