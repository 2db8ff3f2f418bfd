"""The model, its optimizer and one optimizer step (bf16 autocast, clipping, the lr), for training and benchmarks."""
from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from audiopg.core.device import DistInfo
from audiopg.model.factor_heads import FactorTarget
from audiopg.model.objectives import PretrainModel
from audiopg.train.config import PretrainConfig
from audiopg.train.data import Batch

__all__ = ["StepRunner", "build_model", "build_optimizer"]


def build_model(config: PretrainConfig, device: torch.device,
                factor_targets: tuple[FactorTarget, ...] = ()) -> PretrainModel:
    """The pre-training model of ``config.objective`` (with the heads of ``factor_targets`` for +factors),
    initialised on the CPU from ``config.seed`` (same weights on any device)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = PretrainModel(config.model_config(), config.objective_config(), factor_targets)
    return model.to(device)


def build_optimizer(model: PretrainModel, config: PretrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW (fused on CUDA), no weight decay on biases, norms and tokens; the teacher is not optimized."""
    groups = model.param_groups(config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), fused=device.type == "cuda")


class StepRunner:
    """One optimizer step of the pre-training model: the same code for training and benchmarks.

    ``forward_backward`` runs the (possibly DDP-wrapped, compiled) model under
    bf16 autocast on CUDA (fp32 on CPU), back-propagates and clips the gradient
    norm; ``apply`` sets the learning rate, steps the optimizer and moves the teacher (latent objectives).
    """

    def __init__(self, model: PretrainModel, optimizer: torch.optim.Optimizer, config: PretrainConfig,
                 device: torch.device, dist: DistInfo = DistInfo()):
        self.model = model  # the plain module (state dicts, reconstructions, the teacher)
        self.optimizer = optimizer
        self.config = config
        self.device = device
        net: torch.nn.Module = model
        if dist.enabled:
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            net = torch.compile(net)
        self.net = net
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    def forward_backward(self, batch: Batch, mask_generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Loss (fp32 scalar), the gradient norm before clipping and the loss's parts (fp32 scalars; none for
        mae), all as tensors (no sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            out = self.net(batch.spec, batch.factors, mask_generator)
        loss = out.loss.float()
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return loss.detach(), norm.detach(), {k: v.detach().float() for k, v in out.parts.items()}

    def apply(self, lr: float, step: int, total: int) -> None:
        """Optimizer step ``step`` (0-based) of ``total`` at ``lr``, then the teacher's EMA update."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.step()
        self.model.update_teacher(step, total)
