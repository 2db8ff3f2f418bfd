"""The pre-training loop: procedural clips -> log-mel -> the objective's model (masked autoencoder...), exact resume.

:func:`pretrain` runs one session of a run (fresh or resumed) in its folder.  The loop, the run folder, resume,
budgets, DDP and signals are described in docs/training.md ("Pre-training").
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import torch

from audiopg.audio.fbank import FbankStats
from audiopg.core.device import DistInfo, setup_distributed
from audiopg.core.errors import AudioPGError, ConfigError
from audiopg.core.schedule import lr_at
from audiopg.model.factor_heads import world_factor_targets
from audiopg.train.budget import calibrate, make_plan, refit_plan, timed_mean
from audiopg.train.config import PretrainConfig
from audiopg.train.data import SynthSpectrograms, compute_fbank_stats
from audiopg.train.figures import write_reconstructions
from audiopg.train.metrics import StepLog
from audiopg.train.prefetch import Prefetcher
from audiopg.train.run_dir import (
    CONFIG_FILE,
    ENCODER_FILE,
    METRICS_FILE,
    RECON_FILE,
    STATE_FILE,
    derive_seed,
    describe_run,
    device_name,
    open_run,
    prepare_run_dir,
    rank_rng_state,
    restore_rank_rng,
    save_state,
    truncate_metrics,
    write_config_json,
    write_encoder,
)
from audiopg.train.step import StepRunner, build_model, build_optimizer

__all__ = ["NonFiniteLoss", "PretrainResult", "Trainer", "pretrain"]

FIRST_SAVE_STEP = 1  # a fresh run saves its state after this step too: a kill soon after the start can resume


class NonFiniteLoss(AudioPGError):
    """The loss (or gradient norm) became NaN or infinite; the message names the step."""


@dataclass
class PretrainResult:
    run_dir: Path
    status: str  # "finished", "interrupted" (signal or request_stop) or "already finished"
    step: int  # steps done
    total_steps: int
    final_loss: float | None  # mean loss of the last (up to) 20 steps of this session
    clips_per_s: float | None  # mean over this session's steps (after the first)
    wall_s: float  # seconds this session ran
    signal: int | None = None  # the signal that stopped it, if any


def pretrain(config: PretrainConfig, run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
             on_step: Callable[[Trainer, int, float], None] | None = None,
             log: Callable[[str], None] | None = None) -> PretrainResult:
    """Pre-train a masked autoencoder on the procedural world; outputs go to ``run_dir``.

    ``resume=True`` continues the run in ``run_dir`` to its planned end; ``config``
    must then equal the run's own config (:func:`~audiopg.train.run_dir.load_run_config`) except for
    ``device``, ``progress`` and ``save_every_minutes``.  A fresh run refuses a folder holding a run unless
    ``overwrite`` (then replaced whole); see :func:`~audiopg.train.run_dir.open_run`.  ``on_step(trainer, step, loss)``
    is called after every applied step (``trainer.request_stop()`` stops the run
    there, saving the state).  Raises :class:`NonFiniteLoss` when the loss diverges.
    """
    return Trainer(config, run_dir, resume=resume, overwrite=overwrite, on_step=on_step, log=log).run()


class Trainer:
    """Runs one pre-training session (fresh or resumed) in ``run_dir``; see :func:`pretrain`."""

    def __init__(self, config: PretrainConfig, run_dir: str | os.PathLike, resume: bool = False,
                 overwrite: bool = False, on_step: Callable[[Trainer, int, float], None] | None = None,
                 log: Callable[[str], None] | None = None):
        self.config = config.resolved()
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.on_step = on_step
        self._log = log or (lambda msg: print(msg, flush=True))
        self._stop_signal: int | None = None
        self._stop_requested = False
        self.dist = DistInfo()

    def request_stop(self) -> None:
        """Stop after the current step, saving the state (as SIGTERM does)."""
        self._stop_requested = True

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    def _stopping(self) -> bool:
        return self._stop_signal is not None or self._stop_requested

    # ------------------------------------------------------------------ the session
    def run(self) -> PretrainResult:
        self._t0 = time.monotonic()
        self._elapsed_before = 0.0
        with self._stop_signals():
            result = self._run()
            self._barrier()
        return result

    def _run(self) -> PretrainResult:
        self._setup()
        state = open_run(self.run_dir, self.config, self.resume, self.dist.world_size, overwrite=self.overwrite,
                         log=self.log)
        self._barrier()  # every rank has looked at the folder before rank 0 changes it
        if self.dist.is_main:
            prepare_run_dir(self.run_dir, fresh=state is None)
        self.stats = FbankStats.from_dict(state["fbank_stats"]) if state is not None else self._measure_stats()
        self._build()
        self.step = self._resume(state) if state is not None else self._start()
        total = self.plan["total_steps"]
        if self.step >= total:
            return self._already_finished(total)
        return self._loop(self.step, total)

    def _loop(self, start: int, total: int) -> PretrainResult:
        cfg = self.config
        session_t0 = self._last_save = time.monotonic()
        status = "finished"
        with Prefetcher(self.data, cfg.batch_size, self.world_gen, cfg.prefetch) as prefetch, \
                StepLog(self.run_dir, start, total, self.global_batch, write=self.dist.is_main,
                        progress=cfg.progress) as log:
            while self.step < total:
                step = self.step
                lr = lr_at(step, cfg.lr, cfg.min_lr, self.plan["warmup_steps"], total)
                batch, world_before, world_after = prefetch.next()
                rng_before = self._rng_state(world_before)  # to save the state after `step` steps, if this one fails

                loss_t, norm_t, parts_t = self.runner.forward_backward(batch, self.mask_gen)
                loss, norm = float(loss_t.item()), float(norm_t.item())
                parts = dict(zip(parts_t, torch.stack(list(parts_t.values())).tolist())) if parts_t else {}
                mean_loss, parts, any_bad, stop, save_due = self._agree(loss, norm, parts)
                if any_bad:
                    self._stop_nonfinite(step, total, lr, loss, norm, rng_before)
                self.runner.apply(lr, step, total)
                self.step = step + 1

                log.record(self.step, mean_loss, lr, norm, self._elapsed(), parts)
                stop = self._call_on_step(mean_loss) or stop
                if self.plan.get("refit_at_step") == self.step:
                    total = self._refit(log.step_times)
                    log.set_total(total)
                if stop and self.step < total:
                    status = "interrupted"
                    break
                if (save_due or self.step == start + 1 == FIRST_SAVE_STEP) and self.step < total:
                    self._save_state(self.step, self._rng_state(world_after))
        self._save_state(self.step, self._rng_state(world_after))
        return self._finish(status, total, log, session_t0)

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg = self.config
        self.dist, self.device = setup_distributed(cfg.device)
        self.model_config = cfg.model_config()
        self.world_config = cfg.world_config(self.model_config)
        self.fbank_config = cfg.fbank_config(self.model_config, self.world_config)
        self.global_batch = cfg.batch_size * self.dist.world_size
        self.world_seed = derive_seed(cfg.seed, self.dist.rank, "world")
        self.mask_seed = derive_seed(cfg.seed, self.dist.rank, "mask")

    def _measure_stats(self) -> FbankStats:
        """The world's log-mel mean and std, measured at the start of every fresh run (rank 0, then broadcast)."""
        cfg, t = self.config, time.monotonic()
        stats = None
        if self.dist.is_main:
            stats = compute_fbank_stats(self.world_config, self.fbank_config, cfg.stats_clips,
                                        seed=derive_seed(cfg.seed, 0, "stats"), device=self.device)
        stats = self._broadcast_stats(stats)
        self.log(f"fbank stats over {cfg.stats_clips} clips: mean {stats.mean:.4f}, "
                 f"std {stats.std:.4f} ({time.monotonic() - t:.1f} s)")
        return stats

    def _build(self) -> None:
        """Data, model, optimizer, step runner and the two generators (world draws, masks) of this rank."""
        cfg = self.config
        self.described = describe_run(self.model_config, self.world_config, self.fbank_config, self.stats)
        targets = world_factor_targets(self.world_config) if cfg.objective_config().factors else ()
        if cfg.objective_config().factors and not targets:
            raise ConfigError("objective", f"{cfg.objective}: the world draws no factor the heads could predict")
        self.data = SynthSpectrograms(self.world_config, self.fbank_config, self.stats, self.device, targets)
        self.model = build_model(cfg, self.device, targets)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.runner = StepRunner(self.model, self.optimizer, cfg, self.device, self.dist)
        self.world_gen = self.data.generator(self.world_seed)
        self.mask_gen = torch.Generator(device=self.device).manual_seed(self.mask_seed)
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_enc = sum(p.numel() for p in self.model.encoder.parameters())
        heads = f" ({', '.join(t.name for t in targets)})" if targets else ""
        self.log(f"objective {cfg.objective}{heads}, {cfg.masks_per_clip} mask(s) per clip")
        self.log(f"model {cfg.preset}: {n_params / 1e6:.2f} M params ({n_enc / 1e6:.2f} M encoder); "
                 f"clips of {self.world_config.seconds:g} s -> {self.model_config.num_frames} x "
                 f"{self.model_config.num_mel_bins} log-mel; batch {cfg.batch_size} x {self.dist.world_size} "
                 f"process(es) on {device_name(self.device)}")
        window_s = self.model_config.num_frames * self.fbank_config.frame_shift_ms / 1000
        if self.world_config.seconds < window_s - 1e-9 and self.dist.is_main:  # a warning: on stderr, always
            print(f"warning: world.seconds={self.world_config.seconds:g} is shorter than the model's window of "
                  f"{window_s:g} s (model.num_frames={self.model_config.num_frames}): "
                  f"{1 - self.world_config.seconds / window_s:.0%} of every input is padding; set world.seconds "
                  f"to {window_s:g} or model.num_frames to fit the clips", file=sys.stderr, flush=True)

    def _start(self) -> int:
        """A fresh run: make the plan (timing steps in minutes mode) and write config.json; returns step 0."""
        cfg = self.config
        step_s = elapsed = None
        if cfg.minutes is not None:
            step_s = calibrate(self.runner, self.data, cfg, self.dist.rank, self._all_reduce, self._stopping)
            step_s, elapsed = self._all_reduce([step_s, self._elapsed()], op="max")
        self.plan = make_plan(cfg, self.dist.world_size, self.global_batch, step_s, elapsed)
        self._write_config_json()
        how = (f"fitted to {cfg.minutes:g} min at {self.plan['measured_step_s']:.3f} s/step"
               if cfg.minutes is not None else "as asked")
        self.log(f"plan: {self.plan['total_steps']} steps ({how}), warm-up {self.plan['warmup_steps']}, "
                 f"peak lr {cfg.lr:g}")
        return 0

    def _resume(self, state: dict) -> int:
        """A resumed run: weights, optimizer, RNG states and the plan of ``state``; returns its step."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rank_rng(state["ranks"][self.dist.rank], self.world_gen, self.mask_gen, self.device)
        self.plan = state["plan"]
        if self.plan.get("refit_at_step") is not None:  # stopped before the re-fit: keep the plan it had
            self.plan["refit_at_step"] = None
        step = int(state["step"])
        self._elapsed_before = float(state["elapsed_s"])
        if self.dist.is_main:
            truncate_metrics(self.run_dir, step)
        self.log(f"resuming {self.run_dir} at step {step} of {self.plan['total_steps']}")
        return step

    # ------------------------------------------------------------------ steps
    def _agree(self, loss: float, norm: float,
               parts: dict[str, float]) -> tuple[float, dict[str, float], bool, bool, bool]:
        """One all-reduce per step: the loss and its parts averaged over ranks; whether any rank's loss or
        gradient norm is not finite, any rank is stopping (signal or request), rank 0's periodic save is due."""
        bad = not (math.isfinite(loss) and math.isfinite(norm))
        stopping = self._stopping()
        save_due = self.dist.is_main and time.monotonic() - self._last_save >= self.config.save_every_minutes * 60.0
        values = [0.0 if bad else v for v in parts.values()]
        loss_sum, n_bad, n_stop, n_save, *part_sums = self._all_reduce(
            [0.0 if bad else loss, float(bad), float(stopping), float(save_due), *values])
        n = self.dist.world_size
        return loss_sum / n, {k: v / n for k, v in zip(parts, part_sums)}, n_bad > 0, n_stop > 0, n_save > 0

    def _stop_nonfinite(self, step: int, total: int, lr: float, loss: float, norm: float,
                        rng_before: dict) -> NoReturn:
        """Save the state after ``step`` steps (the failed step is not applied) and raise NonFiniteLoss."""
        self._save_state(step, rng_before)
        self._barrier()
        if math.isfinite(loss) and math.isfinite(norm):
            what = "the loss or gradient norm is not finite on another rank"
        else:
            what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
        raise NonFiniteLoss(
            f"{what} at step {step + 1} of {total} (lr {lr:.3g}): the run stopped without applying "
            f"that step; the last good state (after step {step}) is saved in "
            f"{self.run_dir / STATE_FILE}. Lower the learning rate (--lr) or check the config."
        )

    def _call_on_step(self, loss: float) -> bool:
        """The ``on_step`` hook; True when it asked to stop (one process: at once; DDP: at the next all-reduce)."""
        if self.on_step is None:
            return False
        self.on_step(self, self.step, loss)
        return self._stop_requested and not self.dist.enabled

    def _refit(self, step_times: list[float]) -> int:
        """Minutes mode, at the end of the warm-up: the total steps from the warm-up's own step times."""
        step_s, n = timed_mean(step_times)
        step_s, elapsed = self._all_reduce([step_s, self._elapsed()], op="max")
        total = refit_plan(self.plan, self.step, step_s, elapsed, self.config.minutes)
        self._write_config_json()
        self.log(f"plan re-fitted after the warm-up: {total} steps ({step_s:.3f} s/step over "
                 f"{n} steps; first estimate {self.plan['first_total_steps']})")
        return total

    # ------------------------------------------------------------------ state and outputs
    def _rng_state(self, world_rng: torch.Tensor) -> dict:
        return rank_rng_state(self.dist.rank, self.world_seed, self.mask_seed, world_rng, self.mask_gen, self.device)

    def _save_state(self, step: int, rank_rng: dict) -> None:
        """Gather every rank's RNG states; rank 0 writes ``state.pt``."""
        ranks = [rank_rng]
        if self.dist.enabled:
            ranks = [None] * self.dist.world_size
            torch.distributed.all_gather_object(ranks, rank_rng)
        if self.dist.is_main:
            save_state(self.run_dir, {
                "step": step,
                "clips_seen": step * self.global_batch,
                "elapsed_s": self._elapsed(),
                "plan": self.plan,
                "config": self.config.to_dict(),
                "fbank_stats": self.stats.to_dict(),
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "ranks": ranks,
            })
        self._last_save = time.monotonic()

    def _write_config_json(self) -> None:
        if self.dist.is_main:
            write_config_json(self.run_dir, self.config, self.plan, self.described, self.device)

    def _write_outputs(self) -> Path:
        """Rank 0, at the end: the encoder and (pixel objectives) the reconstruction figure."""
        enc = write_encoder(self.run_dir, self.model.encoder, self.config, self.plan, self.described, self.device,
                            self.step, self.step * self.global_batch, self._elapsed())
        if self.config.objective_config().latent:
            self.log(f"no {RECON_FILE}: the {self.config.objective} objective has no pixel decoder")
        else:
            write_reconstructions(self.run_dir / RECON_FILE, self.model, self.data, self.config.seed, self.step)
        return enc

    def _already_finished(self, total: int) -> PretrainResult:
        self.log(f"{self.run_dir}: the run already finished ({self.step} of {total} steps)")
        if self.dist.is_main and not (self.run_dir / ENCODER_FILE).exists():
            self._write_outputs()
        return PretrainResult(self.run_dir, "already finished", self.step, total, None, None, 0.0)

    def _finish(self, status: str, total: int, log: StepLog, session_t0: float) -> PretrainResult:
        final_loss, clips_per_s = log.final_loss, log.clips_per_s
        if status == "interrupted":
            self.log(f"stopped at step {self.step} of {total}; state saved in {self.run_dir / STATE_FILE}; "
                     f"continue with: audiopg pretrain --resume {self.run_dir}")
            return PretrainResult(self.run_dir, status, self.step, total, final_loss, clips_per_s,
                                  time.monotonic() - session_t0, self._stop_signal)
        if self.dist.is_main:
            enc = self._write_outputs()
            self.log(f"done: {self.step} steps, {self.step * self.global_batch} clips, final loss "
                     f"{final_loss:.4f}, {clips_per_s or float('nan'):.1f} clips/s, "
                     f"{self._elapsed() / 60:.1f} min in all")
            figure = "" if self.config.objective_config().latent else f"{RECON_FILE}, "
            self.log(f"outputs in {self.run_dir}/: {enc.name} (encoder), {figure}{METRICS_FILE}, "
                     f"{CONFIG_FILE}, {STATE_FILE} (resumable state)")
        return PretrainResult(self.run_dir, status, self.step, total, final_loss, clips_per_s,
                              time.monotonic() - session_t0)

    def _elapsed(self) -> float:
        return self._elapsed_before + (time.monotonic() - self._t0)

    # ------------------------------------------------------------------ signals and collectives
    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM finish the current step, save the state and end the session; a second Ctrl-C stops at
        once (the last save stays intact).  Only the main thread can take signals."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.dist.is_main:
                print(f"\naudiopg pretrain: got {signal.Signals(signum).name}; saving the state after this step...",
                      file=sys.stderr, flush=True)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    def _all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        if not self.dist.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        reduce_op = torch.distributed.ReduceOp
        torch.distributed.all_reduce(t, op=reduce_op.MAX if op == "max" else reduce_op.SUM)
        return t.tolist()

    def _broadcast_stats(self, stats: FbankStats | None) -> FbankStats:
        if not self.dist.enabled:
            return stats
        t = torch.zeros(2, dtype=torch.float64, device=self.device)
        if stats is not None:
            t[0], t[1] = stats.mean, stats.std
        torch.distributed.broadcast(t, src=0)
        return FbankStats(mean=float(t[0]), std=float(t[1]))

    def _barrier(self) -> None:
        """Wait until rank 0 has written its files, so that no process leaves the group early."""
        if self.dist.enabled:
            torch.distributed.barrier()
