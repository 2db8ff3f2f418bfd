"""The pre-training loop: procedural clips -> log-mel -> masked autoencoder, with exact resume.

One run lives in one folder::

    RUN/config.json           resolved config, the plan (total steps, warm-up), world/model/fbank configs, stats
    RUN/metrics.jsonl         one line per step: step, loss, lr, clips_per_s, elapsed (+ grad_norm)
    RUN/state.pt              full training state (torch.save; load with weights_only=True), atomic
    RUN/encoder.safetensors   the encoder and its metadata (see audiopg.model.checkpoint), at the end
    RUN/reconstructions.png   4 clips: original, masked input, reconstruction, at the end
    RUN/tb/                   TensorBoard scalars, only if torch.utils.tensorboard imports

Length: ``steps`` fixes the plan; with ``minutes`` (a wall-clock budget that
counts from the start, stats included) a few throwaway steps are timed and then
undone, the total steps are fitted to the budget, and fitted once more from the
warm-up's own step times when the warm-up ends (the warm-up lr does not depend
on the total).  The plan is written to ``config.json`` and ``state.pt``; a
resumed run follows it to its end.

Determinism: the model is initialised from ``seed``; every batch comes from one
``torch.Generator`` (the world's) and every mask from another, both seeded from
``seed`` and the rank and both saved in ``state.pt``, so a run stopped at step k
and resumed computes the same steps as one that never stopped.

Faults: SIGINT/SIGTERM finish the current step, save the state and exit; the
state file is written to a temp file and renamed, so a SIGKILL leaves the last
complete save; a non-finite loss (or gradient norm) stops the run before that
step is applied, saves the last good state and raises :class:`NonFiniteLoss`.

Many processes: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
DistributedDataParallel (nccl on CUDA, gloo on CPU); each rank draws its own
clips and masks (seeds derived from ``seed`` and the rank), ``batch_size`` is per
rank, and only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import platform
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from audiopg.audio.fbank import FbankStats
from audiopg.core.config import to_dict, write_json
from audiopg.core.device import DistInfo, setup_distributed
from audiopg.core.errors import AudioPGError, CheckpointError, ConfigError
from audiopg.core.io import atomic_write, atomic_write_bytes
from audiopg.core.schedule import lr_at
from audiopg.model import MaskedAutoencoder
from audiopg.model.checkpoint import save_encoder
from audiopg.train.config import RESUME_MAY_CHANGE, PretrainConfig, warmup_steps_for
from audiopg.train.data import SynthSpectrograms, compute_fbank_stats

__all__ = [
    "NonFiniteLoss",
    "PretrainResult",
    "StepRunner",
    "Prefetcher",
    "pretrain",
    "load_run_config",
    "check_resume_config",
    "load_state",
    "derive_seed",
]

STATE_FORMAT = 1
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
ENCODER_FILE = "encoder.safetensors"
RECON_FILE = "reconstructions.png"
STATS_BATCH = 64  # clips per draw when measuring the fbank stats (fixed, so the stats do not depend on batch_size)
UNTIMED_STEPS = 2  # minutes mode: steps run before timing (allocations, compilation)


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


# ----------------------------------------------------------------------------- small helpers
def derive_seed(seed: int, rank: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream (``world``, ``mask``...) of one rank."""
    digest = hashlib.sha256(f"audiopg:{int(seed)}:{int(rank)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the repository holding the package, or None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) >= 7 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu ({model or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                return name, a.get(key), b.get(key)
            diff = _first_difference(a[key], b[key], name)
            if diff:
                return diff
        return None
    return None if a == b else (prefix, a, b)


# ----------------------------------------------------------------------------- distributed
# ----------------------------------------------------------------------------- data prefetch
class Prefetcher:
    """Draws batches with one generator, one batch ahead in a background thread (or inline).

    ``next()`` returns ``(x, state_before, state_after)``: the batch and the
    generator state before and after drawing it, so that a saved state can
    point at exactly the next batch to draw, whatever the thread has drawn
    since.  On CUDA the thread works on its own stream and the batch is handed
    over with an event, so synthesis overlaps the training kernels.
    """

    def __init__(self, data: SynthSpectrograms, batch_size: int, generator: torch.Generator, enabled: bool = True):
        self.data = data
        self.batch_size = batch_size
        self.generator = generator
        self.enabled = enabled
        self.device = data.device
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._ready = None
        if enabled and self.device.type == "cuda":  # the side stream starts after the work queued so far
            self._ready = torch.cuda.Event()
            self._ready.record(torch.cuda.current_stream(self.device))
        if enabled:
            self._thread = threading.Thread(target=self._work, name="audiopg-prefetch", daemon=True)
            self._thread.start()

    def _draw(self):
        before = self.generator.get_state()
        x = self.data.batch(self.batch_size, self.generator)
        return x, before, self.generator.get_state()

    def _work(self) -> None:
        try:
            stream = None
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
                stream = torch.cuda.Stream(device=self.device)
                stream.wait_event(self._ready)
            while not self._stop.is_set():
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    item = self._draw()
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                while not self._stop.is_set():
                    try:
                        self._queue.put((item, event, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # handed to the training thread
            self._queue.put((None, None, err))

    def next(self):
        if not self.enabled:
            return self._draw()
        item, event, err = self._queue.get()
        if err is not None:
            raise err
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            item[0].record_stream(current)
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.05)
            self._thread.join()
            self._thread = None


# ----------------------------------------------------------------------------- model step
def build_model(config: PretrainConfig, device: torch.device) -> MaskedAutoencoder:
    """The masked autoencoder, initialised on the CPU from ``config.seed`` (same weights on any device)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = MaskedAutoencoder(config.model_config())
    return model.to(device)


def build_optimizer(model: MaskedAutoencoder, config: PretrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW (fused on CUDA), no weight decay on biases, norms and tokens."""
    groups = model.param_groups(config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), fused=device.type == "cuda")


class StepRunner:
    """One optimizer step of the masked autoencoder: the same code for training and benchmarks.

    ``forward_backward`` runs the (possibly DDP-wrapped, compiled) model under
    bf16 autocast on CUDA (fp32 on CPU), back-propagates and clips the gradient
    norm; ``apply`` sets the learning rate and steps the optimizer.
    """

    def __init__(self, model: MaskedAutoencoder, optimizer: torch.optim.Optimizer, config: PretrainConfig,
                 device: torch.device, dist: DistInfo = DistInfo()):
        self.model = model  # the plain module (state dicts, reconstructions)
        self.optimizer = optimizer
        self.config = config
        self.device = device
        net: torch.nn.Module = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            net = torch.compile(net)
        self.net = net
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    def forward_backward(self, x: torch.Tensor, mask_generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss (fp32 scalar) and the gradient norm before clipping, both as tensors (no sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            out = self.net(x, generator=mask_generator)
        loss = out.loss.float()
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return loss.detach(), norm.detach()

    def apply(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.step()


# ----------------------------------------------------------------------------- run folder
def load_run_config(run_dir: str | os.PathLike) -> tuple[PretrainConfig, dict]:
    """The resolved training config of a run folder and the whole ``config.json``."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    if not path.exists():
        raise CheckpointError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); start a new run with --out instead")
    try:
        data = json.loads(path.read_text())
        config = PretrainConfig.from_dict(data["train"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable run config ({err})") from None
    except ConfigError as err:
        raise CheckpointError(f"{path}: invalid run config ({err})") from None
    return config, data


def check_resume_config(saved: PretrainConfig, requested: PretrainConfig, run_dir: str | os.PathLike = "") -> None:
    """Raise CheckpointError naming the first key (other than device/progress/save_every_minutes)
    where ``requested`` differs from the run's own config."""
    a, b = to_dict(saved), to_dict(requested)
    for key in RESUME_MAY_CHANGE:
        a.pop(key, None)
        b.pop(key, None)
    diff = _first_difference(a, b)
    if diff:
        key, old, new = diff
        raise CheckpointError(
            f"{key}: differs from the run in {run_dir} (the run has {json.dumps(old)}, this command asks for "
            f"{json.dumps(new)}); leave it out to continue the run as planned, or start a new run with --out"
        )


def load_state(path: str | os.PathLike) -> dict:
    """A ``state.pt`` (tensors on the CPU), loaded with ``weights_only=True``; CheckpointError if broken."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no saved training state (the run stopped before its first save); "
                              "start it again with --out")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"{path}: unreadable training state ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an audiopg training state of format {STATE_FORMAT}")
    return state


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Runs one pre-training session (fresh or resumed) in ``run_dir``; see :func:`pretrain`."""

    def __init__(self, config: PretrainConfig, run_dir: str | os.PathLike, resume: bool = False,
                 on_step: Callable[["Trainer", int, float], None] | None = None,
                 log: Callable[[str], None] | None = None):
        self.config = config.resolved()
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.on_step = on_step
        self._log = log or (lambda msg: print(msg, flush=True))
        self._stop_signal: int | None = None
        self._stop_requested = False
        self.dist = DistInfo()

    # ------------------------------------------------------------------ public
    def request_stop(self) -> None:
        """Stop after the current step, saving the state (as SIGTERM does)."""
        self._stop_requested = True

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    # ------------------------------------------------------------------ collectives
    def _all_reduce(self, values: list[float], op=None) -> list[float]:
        if not self.dist.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
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

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.config
        self.dist, self.device = setup_distributed(cfg.device)
        self.model_config = cfg.model_config()
        self.world_config = cfg.world_config(self.model_config)
        self.fbank_config = cfg.fbank_config(self.model_config, self.world_config)
        self.global_batch = cfg.batch_size * self.dist.world_size
        self.world_seed = derive_seed(cfg.seed, self.dist.rank, "world")
        self.mask_seed = derive_seed(cfg.seed, self.dist.rank, "mask")

    def _prepare_folder(self) -> dict | None:
        """Fresh run: refuse a folder that holds a run.  Resume: load and check the state."""
        run = self.run_dir
        if not self.resume:
            if (run / CONFIG_FILE).exists() or (run / STATE_FILE).exists():
                raise CheckpointError(f"{run} already holds a run; continue it with --resume {run}, "
                                      "or choose another --out")
            return None
        saved, _ = load_run_config(run)
        check_resume_config(saved, self.config, run)
        state = load_state(run / STATE_FILE)
        plan = state["plan"]
        if plan["world_size"] != self.dist.world_size:
            raise CheckpointError(f"world_size: the run in {run} used {plan['world_size']} process(es), "
                                  f"this one has {self.dist.world_size}")
        return state

    # ------------------------------------------------------------------ state
    def _rank_state(self, world_state: torch.Tensor, mask_state: torch.Tensor,
                    torch_state: torch.Tensor, cuda_state: torch.Tensor | None, python_state) -> dict:
        last = self._last_batch
        return {
            "rank": self.dist.rank,
            "world_seed": self.world_seed,
            "mask_seed": self.mask_seed,
            "world_rng": world_state.cpu(),
            "mask_rng": mask_state.cpu(),
            "torch_rng": torch_state.cpu(),
            "cuda_rng": cuda_state.cpu() if cuda_state is not None else None,
            "python_rng": python_state,
            "last_batch_sum": float(last.double().sum()) if last is not None else None,
        }

    def _current_rng(self, world_state: torch.Tensor) -> dict:
        cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return self._rank_state(world_state, self.mask_gen.get_state(), torch.get_rng_state(), cuda_state,
                                random.getstate())

    def _save_state(self, step: int, rank_rng: dict) -> None:
        """Gather every rank's RNG states; rank 0 writes ``state.pt`` atomically."""
        ranks = [rank_rng]
        if self.dist.enabled:
            ranks = [None] * self.dist.world_size
            torch.distributed.all_gather_object(ranks, rank_rng)
        if not self.dist.is_main:
            return
        state = {
            "format": STATE_FORMAT,
            "step": step,
            "clips_seen": step * self.global_batch,
            "elapsed_s": self._elapsed(),
            "plan": self.plan,
            "config": self.config.to_dict(),
            "fbank_stats": self.stats.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "ranks": ranks,
        }
        atomic_write(self.run_dir / STATE_FILE, lambda f: torch.save(state, f))
        self._last_save = time.monotonic()

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        mine = state["ranks"][self.dist.rank]
        self.world_gen.set_state(mine["world_rng"])
        self.mask_gen.set_state(mine["mask_rng"])
        torch.set_rng_state(mine["torch_rng"])
        if self.device.type == "cuda" and mine.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        if mine.get("python_rng") is not None:
            py = mine["python_rng"]
            random.setstate((py[0], tuple(py[1]), py[2]))

    def _elapsed(self) -> float:
        return self._elapsed_before + (time.monotonic() - self._t0)

    # ------------------------------------------------------------------ plan
    def _calibrate(self) -> float:
        """Minutes mode: time a few steps on throwaway draws, then undo them (weights, optimizer, RNG)."""
        cfg = self.config
        saved_params = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        cpu_rng = torch.get_rng_state()
        gen = self.data.generator(derive_seed(cfg.seed, self.dist.rank, "calibrate"))
        mask_gen = torch.Generator(device=self.device).manual_seed(derive_seed(cfg.seed, self.dist.rank, "calibrate-mask"))
        prefetch = Prefetcher(self.data, cfg.batch_size, gen, cfg.prefetch)
        times = []
        try:
            for i in range(UNTIMED_STEPS + cfg.fit_steps):
                t = time.perf_counter()
                x, _, _ = prefetch.next()
                loss, norm = self.runner.forward_backward(x, mask_gen)
                self._all_reduce([float(loss.item())])
                self.runner.apply(0.0)
                if i >= UNTIMED_STEPS:
                    times.append(time.perf_counter() - t)
                if self._stop_signal is not None or self._stop_requested:
                    break
        finally:
            prefetch.close()
        with torch.no_grad():
            self.model.load_state_dict(saved_params)
        self.optimizer.state.clear()
        self.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.device)
        step_s = sum(times) / len(times) if times else float("nan")
        return step_s

    def _make_plan(self) -> dict:
        cfg = self.config
        plan: dict[str, Any] = {"world_size": self.dist.world_size, "global_batch": self.global_batch}
        if cfg.steps is not None:
            total = cfg.steps
            plan.update(total_steps=total, fitted_to_minutes=None, measured_step_s=None)
        else:
            step_s = self._calibrate()
            elapsed = self._elapsed()
            step_s, elapsed = self._all_reduce([step_s, elapsed], torch.distributed.ReduceOp.MAX
                                               if self.dist.enabled else None)
            if not math.isfinite(step_s) or step_s <= 0:
                total = 1
            else:
                total = max(1, int((self._budget_left(elapsed)) / step_s))
            plan.update(total_steps=total, fitted_to_minutes=cfg.minutes, measured_step_s=step_s,
                        planned_at_s=elapsed, first_total_steps=total)
        plan["warmup_steps"] = warmup_steps_for(cfg, plan["total_steps"])
        if cfg.minutes is not None:
            # re-fit once at the end of the warm-up (timed over many more steps); the lr of the warm-up
            # does not depend on the total, so no step already taken changes its meaning
            warm = plan["warmup_steps"]
            plan["refit_at_step"] = warm if UNTIMED_STEPS + cfg.fit_steps <= warm < plan["total_steps"] else None
        return plan

    def _budget_left(self, elapsed: float) -> float:
        """Seconds of the minutes budget left for steps, keeping a reserve for the final outputs."""
        budget = self.config.minutes * 60.0
        reserve = min(2.0 + 0.01 * budget, 0.1 * budget)  # final outputs: state, encoder, reconstructions
        return budget - elapsed - reserve

    def _refit(self, step_times: list[float]) -> int:
        """Minutes mode, at the end of the warm-up: set the total steps from the warm-up's own step times."""
        times = step_times[UNTIMED_STEPS:] or step_times
        step_s, elapsed = self._all_reduce([sum(times) / len(times), self._elapsed()],
                                           torch.distributed.ReduceOp.MAX if self.dist.enabled else None)
        total = max(self.step + 1, self.step + int(self._budget_left(elapsed) / step_s))
        self.plan.update(total_steps=total, measured_step_s=step_s, planned_at_s=elapsed,
                         refit_at_step=None, refitted_at_step=self.step)
        self._write_config_json()
        self.log(f"plan re-fitted after the warm-up: {total} steps ({step_s:.3f} s/step over "
                 f"{len(times)} steps; first estimate {self.plan['first_total_steps']})")
        return total

    # ------------------------------------------------------------------ outputs
    def _write_config_json(self) -> None:
        if not self.dist.is_main:
            return
        write_json(self.run_dir / CONFIG_FILE, {
            "format": STATE_FORMAT,
            "train": self.config.to_dict(),
            "plan": self.plan,
            "model": to_dict(self.model_config),
            "world": self.world_config.to_dict(),
            "fbank": to_dict(self.fbank_config),
            "fbank_stats": self.stats.to_dict(),
            "device": device_name(self.device),
            "git_commit": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def _write_encoder(self, step: int) -> Path:
        path = self.run_dir / ENCODER_FILE
        save_encoder(path, self.model.encoder.state_dict(), {
            "model": to_dict(self.model_config),
            "fbank": to_dict(self.fbank_config),
            "fbank_stats": self.stats.to_dict(),
            "world": self.world_config.to_dict(),
            "step": step,
            "clips_seen": step * self.global_batch,
            "git_commit": git_commit(),
            "train": {**self.config.to_dict(), "plan": self.plan},
            "wall_time_s": round(self._elapsed(), 3),
            "device": device_name(self.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return path

    def _write_reconstructions(self) -> Path:
        path = self.run_dir / RECON_FILE
        gen = self.data.generator(derive_seed(self.config.seed, 0, "reconstructions"))
        mask_gen = torch.Generator(device=self.device).manual_seed(derive_seed(self.config.seed, 0, "reconstructions-mask"))
        was_training = self.model.training
        self.model.eval()
        try:
            x = self.data.batch(4, gen)
            recon = self.model.reconstruct(x, generator=mask_gen)
        finally:
            self.model.train(was_training)
        save_reconstruction_figure(path, x, recon.spec, recon.mask,
                                   title=f"step {self.step}: original | masked input | reconstruction")
        return path

    # ------------------------------------------------------------------ run
    def _install_signals(self):
        previous = {}
        if threading.current_thread() is not threading.main_thread():
            return previous

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop at once (the last save stays intact)
            self._stop_signal = signum
            if self.dist.is_main:
                print(f"\naudiopg pretrain: got {signal.Signals(signum).name}; saving the state after this step...",
                      file=sys.stderr, flush=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def run(self) -> PretrainResult:
        self._t0 = time.monotonic()
        self._elapsed_before = 0.0
        self._last_batch = None
        previous_handlers = self._install_signals()
        try:
            result = self._run()
            self._barrier()
            return result
        finally:
            for sig, h in previous_handlers.items():
                signal.signal(sig, h)

    def _run(self) -> PretrainResult:
        cfg = self.config
        self._setup()
        state = self._prepare_folder()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        # statistics of the world's log-mel values (measured at the start of every fresh run)
        if state is not None:
            self.stats = FbankStats.from_dict(state["fbank_stats"])
        else:
            t = time.monotonic()
            stats = None
            if self.dist.is_main:
                stats = compute_fbank_stats(self.world_config, self.fbank_config, cfg.stats_clips,
                                            seed=derive_seed(cfg.seed, 0, "stats"), device=self.device,
                                            batch_size=STATS_BATCH)
            self.stats = self._broadcast_stats(stats)
            self.log(f"fbank stats over {cfg.stats_clips} clips: mean {self.stats.mean:.4f}, "
                     f"std {self.stats.std:.4f} ({time.monotonic() - t:.1f} s)")

        self.data = SynthSpectrograms(self.world_config, self.fbank_config, self.stats, self.device)
        self.model = build_model(cfg, self.device)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.runner = StepRunner(self.model, self.optimizer, cfg, self.device, self.dist)
        self.world_gen = self.data.generator(self.world_seed)
        self.mask_gen = torch.Generator(device=self.device).manual_seed(self.mask_seed)
        n_params = sum(p.numel() for p in self.model.parameters())
        n_enc = sum(p.numel() for p in self.model.encoder.parameters())
        self.log(f"model {cfg.preset}: {n_params / 1e6:.2f} M params ({n_enc / 1e6:.2f} M encoder); "
                 f"clips of {self.world_config.seconds:g} s -> {self.model_config.num_frames} x "
                 f"{self.model_config.num_mel_bins} log-mel; batch {cfg.batch_size} x {self.dist.world_size} "
                 f"process(es) on {device_name(self.device)}")

        if state is not None:
            self._restore(state)
            self.plan = state["plan"]
            if self.plan.get("refit_at_step") is not None:  # stopped before the re-fit: keep the plan it had
                self.plan["refit_at_step"] = None
            start = int(state["step"])
            self._elapsed_before = float(state["elapsed_s"])
            if self.dist.is_main:
                self._truncate_metrics(start)
                for stray in self.run_dir.glob(f".{STATE_FILE}.*.tmp"):  # left by a SIGKILL during a save
                    stray.unlink(missing_ok=True)
            self.log(f"resuming {self.run_dir} at step {start} of {self.plan['total_steps']}")
        else:
            self.plan = self._make_plan()
            start = 0
            self._write_config_json()
            how = (f"fitted to {cfg.minutes:g} min at {self.plan['measured_step_s']:.3f} s/step"
                   if cfg.minutes is not None else "as asked")
            self.log(f"plan: {self.plan['total_steps']} steps ({how}), warm-up {self.plan['warmup_steps']}, "
                     f"peak lr {cfg.lr:g}")
        self.step = start
        total = self.plan["total_steps"]
        if start >= total:
            self.log(f"{self.run_dir}: the run already finished ({start} of {total} steps)")
            if self.dist.is_main and not (self.run_dir / ENCODER_FILE).exists():
                self._write_encoder(start)
                self._write_reconstructions()
            return PretrainResult(self.run_dir, "already finished", start, total, None, None, 0.0)
        return self._loop(start, total)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines of steps after the saved state (they will be computed again)."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                if json.loads(line)["step"] <= step:
                    keep.append(line)
        atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())

    def _loop(self, start: int, total: int) -> PretrainResult:
        cfg = self.config
        session_t0 = time.monotonic()
        self._last_save = time.monotonic()
        save_every = cfg.save_every_minutes * 60.0
        warmup = self.plan["warmup_steps"]
        metrics = open(self.run_dir / METRICS_FILE, "a") if self.dist.is_main else None
        tb = _tensorboard(self.run_dir / "tb") if self.dist.is_main else None
        bar = None
        if self.dist.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.05,
                       desc="pretrain", file=sys.stderr)
        prefetch = Prefetcher(self.data, cfg.batch_size, self.world_gen, cfg.prefetch)
        losses: list[float] = []
        rates: list[float] = []
        status = "finished"
        world_before = self.world_gen.get_state()
        step_times: list[float] = []
        t_prev = time.perf_counter()
        try:
            while self.step < total:
                step = self.step
                lr = lr_at(step, cfg.lr, cfg.min_lr, warmup, total)
                x, world_before, world_after = prefetch.next()
                rng_before = (self.mask_gen.get_state(), torch.get_rng_state(),
                              torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                              random.getstate())
                self._last_batch = x
                loss_t, norm_t = self.runner.forward_backward(x, self.mask_gen)
                stop = self._stop_requested or self._stop_signal is not None
                save_due = self.dist.is_main and time.monotonic() - self._last_save >= save_every
                v, g = float(loss_t.item()), float(norm_t.item())
                bad = not (math.isfinite(v) and math.isfinite(g))
                loss_sum, n_bad, n_stop, n_save = self._all_reduce([v if not bad else 0.0, float(bad),
                                                                    float(stop), float(save_due)])
                if n_bad:
                    # the step is not applied: weights, optimizer and RNG states are those after `step` steps
                    self._save_state(step, self._rank_state(world_before, *rng_before))
                    self._barrier()
                    what = (f"the loss is {v}" if not math.isfinite(v) else f"the gradient norm is {g}") \
                        if bad else "the loss or gradient norm is not finite on another rank"
                    raise NonFiniteLoss(
                        f"{what} at step {step + 1} of {total} (lr {lr:.3g}): the run stopped without applying "
                        f"that step; the last good state (after step {step}) is saved in "
                        f"{self.run_dir / STATE_FILE}. Lower the learning rate (--lr) or check the config."
                    )
                self.runner.apply(lr)
                self.step = step + 1
                now = time.perf_counter()
                step_times.append(now - t_prev)
                rate = self.global_batch / max(now - t_prev, 1e-9)
                t_prev = now
                loss = loss_sum / self.dist.world_size
                losses.append(loss)
                if self.step > start + 1:
                    rates.append(rate)
                if metrics is not None:
                    record = {"step": self.step, "loss": round(loss, 7), "lr": lr, "clips_per_s": round(rate, 2),
                              "elapsed": round(self._elapsed(), 3), "grad_norm": round(float(norm_t), 5)}
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if tb is not None:
                    tb.add_scalar("loss", loss, self.step)
                    tb.add_scalar("lr", lr, self.step)
                    tb.add_scalar("clips_per_s", rate, self.step)
                if bar is not None:
                    recent = rates[-20:] or [rate]
                    bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{sum(recent) / len(recent):.1f}", refresh=False)
                    bar.update(1)
                if self.on_step is not None:
                    self.on_step(self, self.step, loss)
                    if self._stop_requested and not n_stop and not self.dist.enabled:
                        n_stop = 1.0
                if self.plan.get("refit_at_step") == self.step:
                    total = self._refit(step_times)
                    if bar is not None:
                        bar.total = total
                        bar.refresh()
                if n_stop and self.step < total:
                    status = "interrupted"
                    break
                if n_save and self.step < total:
                    self._save_state(self.step, self._current_rng(world_after))
        finally:
            prefetch.close()
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
            if tb is not None:
                tb.close()
        self._save_state(self.step, self._current_rng(world_after))
        final_loss = sum(losses[-20:]) / len(losses[-20:]) if losses else None
        clips_per_s = sum(rates) / len(rates) if rates else None
        wall = time.monotonic() - session_t0
        if status == "interrupted":
            self.log(f"stopped at step {self.step} of {total}; state saved in {self.run_dir / STATE_FILE}; "
                     f"continue with: audiopg pretrain --resume {self.run_dir}")
            return PretrainResult(self.run_dir, status, self.step, total, final_loss, clips_per_s, wall,
                                  self._stop_signal)
        if self.dist.is_main:
            enc = self._write_encoder(self.step)
            self._write_reconstructions()
            self.log(f"done: {self.step} steps, {self.step * self.global_batch} clips, final loss "
                     f"{final_loss:.4f}, {clips_per_s or float('nan'):.1f} clips/s, "
                     f"{self._elapsed() / 60:.1f} min in all")
            self.log(f"outputs in {self.run_dir}/: {enc.name} (encoder), {RECON_FILE}, {METRICS_FILE}, "
                     f"{CONFIG_FILE}, {STATE_FILE} (resumable state)")
        return PretrainResult(self.run_dir, status, self.step, total, final_loss, clips_per_s,
                              time.monotonic() - session_t0)


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(path))


def save_reconstruction_figure(path: str | os.PathLike, spec: torch.Tensor, recon: torch.Tensor,
                               mask: torch.Tensor, title: str = "") -> None:
    """A PNG with one row per clip: the input, the input with masked patches blanked, the reconstruction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spec, recon, mask = (t.detach().float().cpu() for t in (spec, recon, mask))
    n = spec.shape[0]
    fig = Figure(figsize=(12, 2.2 * n + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False, sharex=True, sharey=True)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.5 / (2.2 * n + 0.6), top=1 - 0.55 / (2.2 * n + 0.6),
                        hspace=0.25, wspace=0.04)
    lo, hi = float(spec.min()), float(spec.max())
    import matplotlib

    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.8")
    for i in range(n):
        masked = spec[i].clone()
        masked[mask[i] > 0.5] = float("nan")
        for j, (img, name) in enumerate(((spec[i], "original"), (masked, "masked input"), (recon[i], "reconstruction"))):
            ax = axes[i][j]
            ax.imshow(img.T.numpy(), origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap=cmap,
                      interpolation="nearest")
            ax.set_title(f"clip {i + 1}: {name}", fontsize=9, pad=3)
            ax.tick_params(labelsize=7)
        axes[i][0].set_ylabel("mel bin", fontsize=8)
    for j in range(3):
        axes[n - 1][j].set_xlabel("frame", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(path, buf.getvalue())


def pretrain(config: PretrainConfig, run_dir: str | os.PathLike, *, resume: bool = False,
             on_step: Callable[[Trainer, int, float], None] | None = None,
             log: Callable[[str], None] | None = None) -> PretrainResult:
    """Pre-train a masked autoencoder on the procedural world; outputs go to ``run_dir``.

    ``resume=True`` continues the run in ``run_dir`` to its planned end; ``config``
    must then equal the run's own config (:func:`load_run_config`) except for
    ``device``, ``progress`` and ``save_every_minutes``.  ``on_step(trainer, step, loss)``
    is called after every applied step (``trainer.request_stop()`` stops the run
    there, saving the state).  Raises :class:`NonFiniteLoss` when the loss diverges.
    """
    return Trainer(config, run_dir, resume=resume, on_step=on_step, log=log).run()
