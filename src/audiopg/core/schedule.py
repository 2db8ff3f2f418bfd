"""The learning-rate schedule of every loop (pre-training and fine-tuning)."""
from __future__ import annotations

import math


def lr_at(step: int, peak: float, min_lr: float, warmup: int, total: int) -> float:
    """Learning rate of 0-based ``step``: linear warm-up to ``peak`` over ``warmup`` steps
    (step ``warmup - 1`` reaches it), then a cosine from ``peak`` to ``min_lr`` at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = total - warmup
    if decay_steps <= 1:
        return peak
    progress = min(1.0, (step - warmup) / (decay_steps - 1))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
