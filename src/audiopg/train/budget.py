"""The run's plan: total and warm-up steps, fitted to a wall-clock budget (``minutes``) by timing steps.

How the fit works, and why it is done twice: docs/training.md ("Budgets").
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from audiopg.train.config import PretrainConfig, warmup_steps_for
from audiopg.train.data import SynthSpectrograms
from audiopg.train.prefetch import Prefetcher
from audiopg.train.run_dir import derive_seed
from audiopg.train.step import StepRunner

__all__ = ["UNTIMED_STEPS", "budget_left", "calibrate", "make_plan", "refit_plan", "timed_mean"]

UNTIMED_STEPS = 2  # steps run before timing (allocations, compilation)


def calibrate(runner: StepRunner, data: SynthSpectrograms, config: PretrainConfig, rank: int,
              sync: Callable[[list[float]], Any], should_stop: Callable[[], bool]) -> float:
    """Seconds per step, timed over ``config.fit_steps`` throwaway steps of the run's objective (after the
    untimed ones) on their own draws, then undone: weights (the teacher's too), optimizer state and the global
    RNGs are as before.  ``sync`` is called on each step's loss (the all-reduce of a DDP step, so that its cost
    is timed too)."""
    model, optimizer, device = runner.model, runner.optimizer, runner.device
    saved_params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    cpu_rng = torch.get_rng_state()
    gen = data.generator(derive_seed(config.seed, rank, "calibrate"))
    mask_gen = torch.Generator(device=device).manual_seed(derive_seed(config.seed, rank, "calibrate-mask"))
    times = []
    n_steps = UNTIMED_STEPS + config.fit_steps
    with Prefetcher(data, config.batch_size, gen, config.prefetch) as prefetch:
        for i in range(n_steps):
            t = time.perf_counter()
            batch, _, _ = prefetch.next()
            loss, _, _ = runner.forward_backward(batch, mask_gen)
            sync([float(loss.item())])
            runner.apply(0.0, i, n_steps)
            if i >= UNTIMED_STEPS:
                times.append(time.perf_counter() - t)
            if should_stop():
                break
    with torch.no_grad():
        model.load_state_dict(saved_params)
    optimizer.state.clear()
    optimizer.zero_grad(set_to_none=True)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    return sum(times) / len(times) if times else float("nan")


def budget_left(minutes: float, elapsed: float) -> float:
    """Seconds of the budget left for steps, keeping a reserve for the final outputs."""
    budget = minutes * 60.0
    reserve = min(2.0 + 0.01 * budget, 0.1 * budget)  # final outputs: state, encoder, reconstructions
    return budget - elapsed - reserve


def make_plan(config: PretrainConfig, world_size: int, global_batch: int,
              step_s: float | None = None, elapsed: float | None = None) -> dict[str, Any]:
    """The plan of a fresh run: ``config.steps``, or the steps of ``step_s`` seconds that fit in the minutes left
    after ``elapsed`` seconds; its warm-up; in minutes mode the step at which to re-fit (None: no re-fit)."""
    plan: dict[str, Any] = {"world_size": world_size, "global_batch": global_batch}
    if config.steps is not None:
        plan.update(total_steps=config.steps, fitted_to_minutes=None, measured_step_s=None)
    else:
        total = 1  # a step time that could not be measured (stopped at once): one step
        if math.isfinite(step_s) and step_s > 0:
            total = max(1, int(budget_left(config.minutes, elapsed) / step_s))
        plan.update(total_steps=total, fitted_to_minutes=config.minutes, measured_step_s=step_s,
                    planned_at_s=elapsed, first_total_steps=total)
    plan["warmup_steps"] = warmup_steps_for(config, plan["total_steps"])
    if config.minutes is not None:
        # re-fit once at the end of the warm-up (timed over many more steps); the lr of the warm-up
        # does not depend on the total, so no step already taken changes its meaning
        warm = plan["warmup_steps"]
        plan["refit_at_step"] = warm if UNTIMED_STEPS + config.fit_steps <= warm < plan["total_steps"] else None
    return plan


def timed_mean(step_times: list[float]) -> tuple[float, int]:
    """Mean seconds per step of a session and the steps it is taken over: its first (untimed) steps are left out
    when there are more."""
    times = step_times[UNTIMED_STEPS:] or step_times
    return sum(times) / len(times), len(times)


def refit_plan(plan: dict[str, Any], step: int, step_s: float, elapsed: float, minutes: float) -> int:
    """At the end of the warm-up: the total steps from the warm-up's own ``step_s``; updates ``plan``."""
    total = max(step + 1, step + int(budget_left(minutes, elapsed) / step_s))
    plan.update(total_steps=total, measured_step_s=step_s, planned_at_s=elapsed, refit_at_step=None,
                refitted_at_step=step)
    return total
