"""Pre-training objectives: the masked autoencoder plus what each objective adds (docs/training.md, "Objectives").

``mae`` regresses normalized pixels of the masked patches; ``latent`` regresses an EMA teacher's averaged,
instance-normalized block outputs there (data2vec 2.0 / EAT); ``+factors`` adds heads that predict the clip's
world factors from the student's pooled visible tokens.  One call, ``PretrainModel(spec, factors, generator)``,
gives the loss and its parts; after each optimizer step, :meth:`PretrainModel.update_teacher`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from audiopg.core.config import check_range
from audiopg.core.errors import ConfigError
from audiopg.model.config import ModelConfig
from audiopg.model.factor_heads import FactorHeads, FactorTarget
from audiopg.model.mae import MaskedAutoencoder
from audiopg.model.vit import as_spectrogram_batch

__all__ = ["OBJECTIVES", "ObjectiveConfig", "ObjectiveOutput", "PretrainModel", "ema_decay_at"]

OBJECTIVES = ("mae", "mae+factors", "latent", "latent+factors")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What a pre-training step optimizes; the keys are :class:`~audiopg.train.config.PretrainConfig`'s own."""

    objective: str = "mae"  # mae, mae+factors, latent, latent+factors
    masks_per_clip: int = 1  # independent masks of every clip per step (B clips -> B x masks_per_clip views)
    factor_loss_weight: float = 0.1  # +factors: weight of the mean factor-head loss
    ema_decay: tuple[float, float] = (0.99, 0.999)  # latent: teacher EMA decay at the first and the last step
    latent_target_layers: int | None = None  # latent: top teacher blocks averaged into the target (None: all)
    utterance_loss_weight: float = 1.0  # latent: weight of the CLS-vs-mean-target loss (EAT; 0: off)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError("objective", f"unknown objective {self.objective!r} (known: {', '.join(OBJECTIVES)})")
        for key, low in (("masks_per_clip", 1), ("latent_target_layers", 1)):
            value = getattr(self, key)
            if value is None and key == "latent_target_layers":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(key, f"expected an integer, got {value!r}")
            if value < low:
                raise ConfigError(key, f"must be >= {low}, got {value}")
        for key in ("factor_loss_weight", "utterance_loss_weight"):
            check_range(key, getattr(self, key), 0.0)
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(key, f"must be finite, got {getattr(self, key)}")
        if not isinstance(self.ema_decay, tuple) or len(self.ema_decay) != 2:
            raise ConfigError("ema_decay", f"expected two numbers (start, end), got {self.ema_decay!r}")
        for i, d in enumerate(self.ema_decay):
            check_range(f"ema_decay[{i}]", d, 0.0)
            if d >= 1.0:
                raise ConfigError(f"ema_decay[{i}]", f"must be in [0, 1), got {d}")

    @property
    def latent(self) -> bool:
        return self.objective.startswith("latent")

    @property
    def factors(self) -> bool:
        return self.objective.endswith("+factors")

    def check_model(self, model: ModelConfig) -> None:
        """Raise ConfigError if the objective does not fit the model (more target layers than blocks)."""
        if self.latent_target_layers is not None and self.latent_target_layers > model.depth:
            raise ConfigError("latent_target_layers",
                              f"{self.latent_target_layers} is more than the model's {model.depth} blocks")


class ObjectiveOutput(NamedTuple):
    loss: torch.Tensor  # scalar: what is back-propagated
    parts: dict[str, torch.Tensor]  # scalar parts for the metrics (mae, latent, utterance, factors...); mae: none


def ema_decay_at(step: int, total: int, decay: tuple[float, float]) -> float:
    """The teacher's EMA decay after step ``step`` (0-based) of ``total``: linear from ``decay[0]`` to ``decay[1]``."""
    start, end = decay
    return start + (end - start) * min(1.0, step / max(1, total))


class PretrainModel(MaskedAutoencoder):
    """The masked autoencoder (student :attr:`encoder` and its decoder) plus what the objective adds: a latent
    teacher (:attr:`teacher`, an EMA copy of the encoder, no gradient) and :attr:`factor_heads`.

    With ``objective="mae"`` it has exactly the parameters, the initialisation and the loss of
    :class:`MaskedAutoencoder`.  With ``latent`` the decoder predicts ``embed_dim`` features per patch.
    Only :attr:`encoder` is exported.
    """

    def __init__(self, config: ModelConfig, objective: ObjectiveConfig = ObjectiveConfig(),
                 factor_targets: tuple[FactorTarget, ...] = ()):
        objective.check_model(config)
        super().__init__(config, pred_dim=config.embed_dim if objective.latent else None)
        self.objective = objective
        self.factor_heads = FactorHeads(factor_targets, config.embed_dim) if objective.factors else None
        self.teacher = copy.deepcopy(self.encoder).requires_grad_(False).eval() if objective.latent else None

    def train(self, mode: bool = True) -> PretrainModel:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never drops paths
        return self

    def forward(self, spec: torch.Tensor, factors: dict[str, torch.Tensor] | None = None,
                generator: torch.Generator | None = None) -> ObjectiveOutput:
        """Loss of one batch: ``spec`` (B, T, F) normalized log-mel, ``factors`` the factor heads' targets
        (:func:`~audiopg.model.factor_heads.factor_values`), ``generator`` drives the masks."""
        obj, m = self.objective, self.objective.masks_per_clip
        spec = as_spectrogram_batch(spec, self.config)
        views = spec.repeat_interleave(m, 0) if m > 1 else spec  # view i * m + j: clip i, mask j
        grid_t = spec.shape[2] // self.config.patch_t
        latent, mask, ids_restore = self.forward_encoder(views, self.config.mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore, grid_t)
        parts: dict[str, torch.Tensor] = {}
        if self.teacher is None:
            loss = parts["mae"] = self.forward_loss(views, pred, mask)
        else:
            target = self.latent_targets(spec)  # (B, L, D), the teacher sees every patch of every clip once
            per_patch = (pred.float() - target.repeat_interleave(m, 0)).pow(2).mean(dim=-1)
            loss = parts["latent"] = (per_patch * mask).sum() / mask.sum().clamp(min=1.0)
            if obj.utterance_loss_weight > 0:
                utterance = target.mean(dim=1).repeat_interleave(m, 0)
                parts["utterance"] = (latent[:, 0].float() - utterance).pow(2).mean()
                loss = loss + obj.utterance_loss_weight * parts["utterance"]
        if self.factor_heads is not None:
            pooled = latent[:, 1:].mean(dim=1)  # the final-layer tokens of the patches the student saw
            values = {k: v.repeat_interleave(m, 0) for k, v in (factors or {}).items()}
            parts["factors"], heads = self.factor_heads(pooled, values)
            parts.update({f"factor_{k}": v for k, v in heads.items()})
            loss = loss + obj.factor_loss_weight * parts["factors"]
        return ObjectiveOutput(loss, parts if obj.objective != "mae" else {})

    @torch.no_grad()
    def latent_targets(self, spec: torch.Tensor) -> torch.Tensor:
        """The teacher's targets ``(B, L, D)`` float32 of the full, unmasked clips: the outputs of its top
        ``latent_target_layers`` blocks (patch tokens), each instance-normalized over the tokens, averaged,
        then layer-normalized over the channels (EAT's targets)."""
        depth = self.config.depth
        k = self.objective.latent_target_layers or depth
        _, layers = self.teacher.forward_tokens(self.teacher.patch_tokens(spec), stop_after=depth - 1)
        y = sum(F.instance_norm(h[:, 1:].float().transpose(1, 2)).transpose(1, 2) for h in layers[-k:]) / k
        return F.layer_norm(y, y.shape[-1:])

    @torch.no_grad()
    def update_teacher(self, step: int, total: int) -> None:
        """After the optimizer step ``step`` (0-based) of ``total``: teacher <- d * teacher + (1 - d) * encoder."""
        if self.teacher is None:
            return
        d = ema_decay_at(step, total, self.objective.ema_decay)
        for t, s in zip(self.teacher.parameters(), self.encoder.parameters()):
            t.lerp_(s.detach(), 1.0 - d)
