"""Pre-training configuration: one frozen dataclass, loadable from YAML/JSON, overridable from the CLI.

Precedence (lowest first): the dataclass defaults, the model preset's training defaults (:data:`PRESET_DEFAULTS`),
a ``--config`` file, ``--set key=value`` overrides, the explicit flags.  Model and world are small typed mappings
(:class:`ModelChoice`, :class:`WorldChoice`); docs/training.md ("Configuration") has the details.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from audiopg.audio.fbank import FbankConfig
from audiopg.core.config import (
    check_range,
    deep_update,
    from_dict,
    merge_overrides,
    read_mapping,
    to_dict,
)
from audiopg.core.errors import ConfigError
from audiopg.model.config import MODEL_PRESETS, ModelConfig
from audiopg.model.encoder import POOLS
from audiopg.model.objectives import ObjectiveConfig
from audiopg.synth import WorldConfig, load_world_config

__all__ = [
    "ModelChoice",
    "PRESET_DEFAULTS",
    "PretrainConfig",
    "RESUME_MAY_CHANGE",
    "WorldChoice",
    "build_pretrain_config",
    "flatten_overrides",
    "warmup_steps_for",
]

# Batch size and peak lr of each model preset, for the budgets it is meant for: tiny (~3 M params) CPU runs of
# minutes (lr swept: BENCHMARKS.md, "Learning rate of tiny"); small (~21 M) single-GPU runs of an hour or so and
# base (~85 M) the published schedule on GPUs, neither swept.  Keyed by MODEL_PRESETS: a preset without an entry
# here fails at import.
_BATCH_SIZE_AND_LR = {"tiny": (64, 1.2e-3), "small": (128, 3e-4), "base": (128, 1.5e-4)}
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    name: dict(zip(("batch_size", "lr"), _BATCH_SIZE_AND_LR[name])) for name in MODEL_PRESETS
}

# Keys that may differ when a run is resumed (they do not change what is computed).
RESUME_MAY_CHANGE = ("device", "progress", "save_every_minutes", "embedding_layer", "embedding_pool")

# A model's clip length is its num_frames at the fbank's hop (fbank_config keeps the default hop): tiny 2.56 s.
FRAME_SHIFT_S = FbankConfig().frame_shift_ms / 1000


class _PresetChoice(dict):
    """A preset name plus changes, ``{preset: ..., key: value, ...}``, as a dict that refuses changes: part of a
    frozen config, still a plain mapping in config.json."""

    @property
    def preset(self) -> str:
        return self["preset"]

    @property
    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.items() if k != "preset"}

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is read-only; make a new config with dataclasses.replace")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self):
        return type(self), (dict(self),)


class ModelChoice(_PresetChoice):
    """The model of a run, ``{preset: tiny|small|base, <ModelConfig field>: value, ...}``: a preset of
    :data:`~audiopg.model.config.MODEL_PRESETS` with some fields replaced.  Checked when built
    (:class:`ConfigError` names ``model.<key>``); ``preset`` comes first and defaults to ``tiny``."""

    def __init__(self, data: Mapping[str, Any] | None = None):
        data = dict(data or {})
        preset = data.pop("preset", "tiny")
        if preset not in MODEL_PRESETS:
            raise ConfigError("model.preset", f"unknown model preset {preset!r} (known: {', '.join(MODEL_PRESETS)})")
        super().__init__({"preset": preset, **data})
        self.config()

    def config(self) -> ModelConfig:
        """The preset's :class:`~audiopg.model.ModelConfig` with ``changes`` applied."""
        return from_dict(ModelConfig, {**to_dict(MODEL_PRESETS[self.preset]), **self.changes}, prefix="model")


class WorldChoice(_PresetChoice):
    """The world of a run, ``{preset: paper|FILE, <world key>: value, ...}``: a world preset (or YAML/JSON file)
    with ``key.sub`` overrides (``{events: {count: [1, 2]}}``); ``preset`` comes first and defaults to ``paper``.
    The keys are checked by :meth:`config` (:meth:`PretrainConfig.resolved` calls it)."""

    def __init__(self, data: Mapping[str, Any] | None = None):
        data = dict(data or {})
        preset = data.pop("preset", "paper")
        if not isinstance(preset, str):
            raise ConfigError("world.preset", f"expected a preset name or a file path, got {preset!r}")
        super().__init__({"preset": preset, **data})

    def config(self, default_seconds: float) -> WorldConfig:
        """The :class:`~audiopg.synth.WorldConfig`; clips last ``default_seconds`` unless ``seconds`` is given."""
        overrides = [f"seconds={default_seconds!r}"] + flatten_overrides(self.changes)
        try:
            return load_world_config(self.preset, overrides)
        except ConfigError as err:
            key = err.key if err.key.startswith("world") else f"world.{err.key}"
            raise ConfigError(key, str(err).split(": ", 1)[1]) from None


_OBJECTIVE = ObjectiveConfig()  # the objective's defaults, written once


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pre-training run needs; ``__post_init__`` validates and names the bad key."""

    model: ModelChoice = field(default_factory=ModelChoice)  # {preset: tiny|small|base, <ModelConfig field>: value...}
    world: WorldChoice = field(default_factory=WorldChoice)  # {preset: paper|FILE, <world key>: value...}
    batch_size: int | None = None  # clips per optimizer step on each rank (None: the preset's default)
    steps: int | None = None  # total optimizer steps; give steps or minutes, not both
    minutes: float | None = None  # wall-clock budget of the whole run (stats included); total steps are fitted to it
    lr: float | None = None  # peak learning rate after warm-up (None: the preset's default)
    min_lr: float = 1e-6  # learning rate at the end of the cosine decay
    warmup_fraction: float = 0.05  # linear warm-up over this fraction of the total steps
    warmup_steps: int | None = None  # ... or over exactly this many steps (overrides warmup_fraction)
    weight_decay: float = 0.05  # AdamW decoupled weight decay (not on biases, norms, cls/mask tokens)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    seed: int = 0  # seeds the world draws, the masking and the model initialisation
    stats_clips: int = 512  # clips used to measure the log-mel mean/std at the start of the run
    save_every_minutes: float = 10.0  # write the full training state this often (and at the end)
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1"...
    prefetch: bool = True  # synthesize the next batch in a background thread while the model trains
    fit_steps: int = 6  # minutes mode: throwaway steps timed (after 2 untimed ones) for the first fit of the steps
    progress: bool = True  # show a progress bar (loss, clips/s, time left)
    # the objective (docs/training.md, "Objectives"); defaults and checks are ObjectiveConfig's (model/objectives.py)
    objective: str = _OBJECTIVE.objective  # mae (normalized pixels), mae+factors, latent (EMA teacher), latent+factors
    masks_per_clip: int = _OBJECTIVE.masks_per_clip  # masks of every clip per step: batch_size x masks_per_clip views
    factor_loss_weight: float = _OBJECTIVE.factor_loss_weight  # +factors: weight of the mean factor-head loss
    ema_decay: tuple[float, float] = _OBJECTIVE.ema_decay  # latent: teacher EMA decay at the first and last step
    latent_target_layers: int | None = _OBJECTIVE.latent_target_layers  # latent: top teacher blocks averaged (None=all)
    utterance_loss_weight: float = _OBJECTIVE.utterance_loss_weight  # latent: EAT's CLS-vs-mean-target loss (0: off)
    # recorded in encoder.safetensors as the model's default embedding (Encoder.embed without layer/pool);
    # measured (BENCHMARKS.md): meanstd beat mean on every probe, and every block concatenated beat the final
    # output alone on every probe over two seeds (+2.7 / +1.0 / +0.8 points at 3,900 steps)
    embedding_layer: int | str = "concat"  # -1 (final output), i (after block i) or concat (every block's)
    embedding_pool: str = "meanstd"  # mean, cls or meanstd (mean and std over time of the tokens)

    def __post_init__(self) -> None:
        for key, kind, example in (("model", ModelChoice, "tiny"), ("world", WorldChoice, "paper")):
            value = getattr(self, key)
            if not isinstance(value, Mapping):
                raise ConfigError(key, f"expected a mapping like {{preset: {example}}}, got {value!r}")
            object.__setattr__(self, key, kind(value))
        for key in ("batch_size", "steps", "stats_clips", "warmup_steps", "seed", "fit_steps"):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(key, f"expected an integer, got {value!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.steps is not None and self.minutes is not None:
            raise ConfigError("steps", "give steps or minutes, not both")
        if self.steps is not None and self.steps < 1:
            raise ConfigError("steps", f"must be >= 1, got {self.steps}")
        if self.minutes is not None:
            _finite("minutes", self.minutes, 0.0)
            if self.minutes <= 0:
                raise ConfigError("minutes", f"must be > 0, got {self.minutes}")
        if self.lr is not None:
            _finite("lr", self.lr, 0.0)
            if self.lr <= 0:
                raise ConfigError("lr", f"must be > 0, got {self.lr}")
        _finite("min_lr", self.min_lr, 0.0)
        if self.lr is not None and self.min_lr > self.lr:
            raise ConfigError("min_lr", f"{self.min_lr} is above the peak lr {self.lr}")
        _finite("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _finite("weight_decay", self.weight_decay, 0.0)
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            raise ConfigError("betas", f"expected two numbers, got {self.betas!r}")
        for i, b in enumerate(self.betas):
            _finite(f"betas[{i}]", b, 0.0)
            if b >= 1.0:
                raise ConfigError(f"betas[{i}]", f"must be in [0, 1), got {b}")
        _finite("grad_clip", self.grad_clip, 0.0)
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed}")
        if self.stats_clips < 1:
            raise ConfigError("stats_clips", f"must be >= 1, got {self.stats_clips}")
        _finite("save_every_minutes", self.save_every_minutes, 0.0)
        if self.save_every_minutes <= 0:
            raise ConfigError("save_every_minutes", f"must be > 0, got {self.save_every_minutes}")
        if self.fit_steps < 1:
            raise ConfigError("fit_steps", f"must be >= 1, got {self.fit_steps}")
        layer, depth = self.embedding_layer, self.model_config().depth
        if layer != "concat" and (isinstance(layer, bool) or not isinstance(layer, int) or not -1 <= layer < depth):
            raise ConfigError("embedding_layer", f"expected -1 (the final output), a block index 0..{depth - 1} or "
                                                 f"'concat', got {layer!r}")
        if self.embedding_pool not in POOLS:
            raise ConfigError("embedding_pool", f"expected one of {', '.join(POOLS)}, got {self.embedding_pool!r}")
        for key in ("compile", "prefetch", "progress"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, f"expected true or false, got {getattr(self, key)!r}")
        self.objective_config().check_model(self.model_config())
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError("device", f"expected a device name like auto, cpu or cuda, got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ConfigError("device",
                                  f"not a device name: {self.device!r} (auto, cpu, cuda, cuda:1...)") from None

    # ------------------------------------------------------------------ derived
    @property
    def preset(self) -> str:
        return self.model.preset

    def resolved(self) -> PretrainConfig:
        """A copy with the preset's defaults filled in (batch size, lr) and the world checked."""
        defaults = PRESET_DEFAULTS[self.preset]
        out = dataclasses.replace(
            self,
            batch_size=self.batch_size if self.batch_size is not None else defaults["batch_size"],
            lr=self.lr if self.lr is not None else defaults["lr"],
        )
        if out.steps is None and out.minutes is None:
            raise ConfigError("steps", "give the length of the run: --steps N or --minutes M")
        if out.min_lr > out.lr:
            raise ConfigError("min_lr", f"{out.min_lr} is above the peak lr {out.lr}")
        out.world_config()
        return out

    def model_config(self) -> ModelConfig:
        """The :class:`~audiopg.model.ModelConfig`: the preset with ``model.*`` fields replaced."""
        return self.model.config()

    def objective_config(self) -> ObjectiveConfig:
        """The :class:`~audiopg.model.objectives.ObjectiveConfig` of these keys (validated there)."""
        return ObjectiveConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ObjectiveConfig)})

    def world_config(self, model_config: ModelConfig | None = None) -> WorldConfig:
        """The :class:`~audiopg.synth.WorldConfig`; ``seconds`` defaults to the model's ``num_frames`` frames."""
        model_config = model_config or self.model_config()
        return self.world.config(default_seconds=model_config.num_frames * FRAME_SHIFT_S)

    def fbank_config(self, model_config: ModelConfig | None = None,
                     world_config: WorldConfig | None = None) -> FbankConfig:
        """Log-mel settings matching the model: its mel bins, its frame count, the world's sample rate."""
        model_config = model_config or self.model_config()
        world_config = world_config or self.world_config(model_config)
        return FbankConfig(
            sample_rate=world_config.sample_rate,
            num_mel_bins=model_config.num_mel_bins,
            target_frames=model_config.num_frames,
        )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PretrainConfig:
        return from_dict(cls, data)


def _finite(key: str, value: Any, low: float | None = None, high: float | None = None) -> None:
    check_range(key, value, low, high)
    if not math.isfinite(value):
        raise ConfigError(key, f"must be finite, got {value}")


def flatten_overrides(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``{events: {count: [1, 2]}}`` -> ``["events.count=[1, 2]"]`` (values as JSON, which YAML reads)."""
    out: list[str] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += flatten_overrides(value, f"{name}.")
        else:
            out.append(f"{name}={json.dumps(value)}")
    return out


def build_pretrain_config(
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> PretrainConfig:
    """Defaults < preset defaults < ``base`` < ``config_file`` < ``key=value`` overrides < explicit ``flags``.

    ``flags`` maps config keys to values given as command-line flags (None = not
    given; ``preset`` sets ``model.preset``).  ``steps`` and ``minutes`` exclude
    each other: where the file, an override or a flag gives one, the other is
    dropped from the layers below.  ``base`` is a config dict to start from (a
    run's own config, when resuming).  Returns the resolved config.
    """
    user: dict[str, Any] = read_mapping(config_file) if config_file else {}
    for key in ("model", "world"):  # "model: tiny" / "world: paper" are shorthand for the preset
        if isinstance(user.get(key), str):
            user[key] = {"preset": user[key]}
    user = merge_overrides(user, list(overrides))
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key == "preset":
            key, value = "model", {**_mapping(user.get("model"), "model"), "preset": value}
        if key in ("steps", "minutes"):
            user.pop("minutes" if key == "steps" else "steps", None)
        user[key] = value
    for key in ("model", "world"):
        if key in user:
            user[key] = _mapping(user[key], key)
    data: dict[str, Any] = {"model": {}, "world": {}}
    if base:
        data = deep_update(data, json.loads(json.dumps(dict(base))))
    if ("steps" in user) != ("minutes" in user):
        data.pop("minutes" if "steps" in user else "steps", None)
    data = deep_update(data, user)
    return from_dict(PretrainConfig, data).resolved()


def _mapping(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"preset": value}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping like {{preset: ...}}, got {value!r}")
    return dict(value)


def warmup_steps_for(config: PretrainConfig, total_steps: int) -> int:
    """Warm-up length in steps for a run of ``total_steps`` (never more than the run)."""
    if config.warmup_steps is not None:
        return min(config.warmup_steps, total_steps)
    return min(total_steps, int(round(config.warmup_fraction * total_steps)))
