"""Pre-training configuration: one frozen dataclass, loadable from YAML/JSON, overridable from the CLI.

Precedence (lowest first): the dataclass defaults, the training defaults of the
model preset (:data:`PRESET_DEFAULTS`), a ``--config`` file, ``--set key=value``
overrides, then the explicit command-line flags (``--steps``, ``--lr``...).

Model and world are given as small mappings: ``model: {preset: tiny, depth: 2}``
(the preset's :class:`~audiopg.model.ModelConfig` with some fields replaced) and
``world: {preset: paper, seconds: 1.28, events: {count: [1, 2]}}`` (a world
preset or YAML/JSON file, with ``key.sub`` overrides).  Unless ``world.seconds``
is given, the clip length follows the model: ``num_frames * 10 ms`` (``tiny``:
2.56 s).  So ``--set model.depth=2 --set world.seconds=0.64`` work as expected.

:meth:`PretrainConfig.resolved` fills every ``None`` (batch size, learning rate)
from the preset table; the run folder's ``config.json`` holds the resolved
config and the run's plan (total steps, warm-up steps).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from audiopg.core.config import (
    check_range,
    deep_update,
    from_dict,
    merge_overrides,
    read_mapping,
    to_dict,
)
from audiopg.core.errors import ConfigError

__all__ = [
    "PRESET_DEFAULTS",
    "PretrainConfig",
    "build_pretrain_config",
    "flatten_overrides",
    "warmup_steps_for",
]

# Training defaults of each model preset, tuned for the budgets the preset is meant for.
#  tiny  (~3 M params, 2.56 s clips): CPU runs of minutes.  An earlier quick test found peak lr 6e-4
#        clearly better than 1.5e-4 at batch 64.  Our sweep (batch 64, 240 steps = 15k clips, seed 0,
#        held-out MAE loss on 512 fresh clips): lr 3e-4 0.8601, 6e-4 0.8573, 1.2e-3 0.8531,
#        2.4e-3 0.8538 -- so 1.2e-3 (the flat optimum is 1.2e-3..2.4e-3; 6e-4 is a little worse).
#  small (~21 M, 5.12 s): single-GPU runs of an hour or so; not swept (between tiny and base).
#  base  (~85 M, 10.24 s): the published schedule (2.5 M clips) on GPUs; not swept here.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"batch_size": 64, "lr": 1.2e-3},
    "small": {"batch_size": 128, "lr": 3e-4},
    "base": {"batch_size": 128, "lr": 1.5e-4},
}

# Keys that may differ when a run is resumed (they do not change what is computed).
RESUME_MAY_CHANGE = ("device", "progress", "save_every_minutes")


def _default_model() -> dict[str, Any]:
    return {"preset": "tiny"}


def _default_world() -> dict[str, Any]:
    return {"preset": "paper"}


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pre-training run needs; ``__post_init__`` validates and names the bad key."""

    model: dict[str, Any] = field(default_factory=_default_model)  # {preset: tiny|small|base, <ModelConfig field>: value...}
    world: dict[str, Any] = field(default_factory=_default_world)  # {preset: paper|FILE, <world key>: value...}; seconds defaults to num_frames * 0.01
    batch_size: int | None = None  # clips per optimizer step on each rank (None: the preset's default)
    steps: int | None = None  # total optimizer steps; give steps or minutes, not both
    minutes: float | None = None  # wall-clock budget of the whole run (stats included); total steps are fitted to it (timed steps, re-fitted after the warm-up)
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
    fit_steps: int = 6  # minutes mode: throwaway steps timed (after 2 untimed ones) for the first fit of the total steps
    progress: bool = True  # show a progress bar (loss, clips/s, time left)

    def __post_init__(self) -> None:
        if not isinstance(self.model, Mapping):
            raise ConfigError("model", f"expected a mapping like {{preset: tiny}}, got {self.model!r}")
        if not isinstance(self.world, Mapping):
            raise ConfigError("world", f"expected a mapping like {{preset: paper}}, got {self.world!r}")
        preset = self.model.get("preset", "tiny")
        if preset not in PRESET_DEFAULTS:
            raise ConfigError("model.preset", f"unknown model preset {preset!r} (known: {', '.join(PRESET_DEFAULTS)})")
        if not isinstance(self.world.get("preset", "paper"), str):
            raise ConfigError("world.preset", f"expected a preset name or a file path, got {self.world.get('preset')!r}")
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
        for key in ("compile", "prefetch", "progress"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, f"expected true or false, got {getattr(self, key)!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError("device", f"expected a device name like auto, cpu or cuda, got {self.device!r}")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ConfigError("device", f"not a device name: {self.device!r} (auto, cpu, cuda, cuda:1...)") from None

    # ------------------------------------------------------------------ derived
    @property
    def preset(self) -> str:
        return self.model.get("preset", "tiny")

    def resolved(self) -> "PretrainConfig":
        """A copy with the preset's defaults filled in (batch size, lr) and the model/world checked."""
        defaults = PRESET_DEFAULTS[self.preset]
        out = dataclasses.replace(
            self,
            model={"preset": self.preset, **{k: v for k, v in self.model.items() if k != "preset"}},
            world={"preset": self.world.get("preset", "paper"), **{k: v for k, v in self.world.items() if k != "preset"}},
            batch_size=self.batch_size if self.batch_size is not None else defaults["batch_size"],
            lr=self.lr if self.lr is not None else defaults["lr"],
        )
        if out.steps is None and out.minutes is None:
            raise ConfigError("steps", "give the length of the run: --steps N or --minutes M")
        if out.min_lr > out.lr:
            raise ConfigError("min_lr", f"{out.min_lr} is above the peak lr {out.lr}")
        out.model_config()
        out.world_config()
        return out

    def model_config(self):
        """The :class:`~audiopg.model.ModelConfig`: the preset with ``model.*`` fields replaced."""
        from audiopg.model import model_preset

        base = to_dict(model_preset(self.preset))
        changes = {k: v for k, v in self.model.items() if k != "preset"}
        return from_dict(type(model_preset(self.preset)), {**base, **changes}, prefix="model")

    def world_config(self, model_config=None):
        """The :class:`~audiopg.synth.WorldConfig`; ``seconds`` defaults to ``num_frames * 0.01``."""
        from audiopg.synth import load_world_config

        model_config = model_config or self.model_config()
        changes = {k: v for k, v in self.world.items() if k != "preset"}
        overrides = [f"seconds={model_config.num_frames * 0.01!r}"] + flatten_overrides(changes)
        try:
            return load_world_config(self.world.get("preset", "paper"), overrides)
        except ConfigError as err:
            key = err.key if err.key.startswith("world") else f"world.{err.key}"
            raise ConfigError(key, str(err).split(": ", 1)[1]) from None

    def fbank_config(self, model_config=None, world_config=None):
        """Log-mel settings matching the model: its mel bins, its frame count, the world's sample rate."""
        from audiopg.audio.fbank import FbankConfig

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
    def from_dict(cls, data: Mapping[str, Any]) -> "PretrainConfig":
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
    data: dict[str, Any] = {"model": _default_model(), "world": _default_world()}
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
