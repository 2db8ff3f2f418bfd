"""What each training step leaves behind: a metrics.jsonl line, TensorBoard scalars, the progress bar."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from audiopg.core.io import named_os_error
from audiopg.train.run_dir import METRICS_FILE, TB_DIR

__all__ = ["StepLog", "open_tensorboard"]


def open_tensorboard(path: Path):
    """A TensorBoard ``SummaryWriter`` on ``path``, or None when the ``tensorboard`` extra is not installed
    (``pip install audiopg[tensorboard]``; docs/export.md lists what is logged)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional (and slow to import: only here)
        return None
    return SummaryWriter(str(path))


class StepLog:
    """One session's step records.  With ``write`` (rank 0): a line per step appended to ``metrics.jsonl``
    (step, loss, lr, clips_per_s, elapsed, grad_norm, then ``loss_<part>`` for each part of a non-mae objective's
    loss), the same as TensorBoard scalars (but elapsed) when the extra is installed, and with ``progress``
    a progress bar.  On every rank: the session's losses, clips/s and step times (the clock starts when the
    log is made)."""

    def __init__(self, run_dir: Path, start: int, total: int, global_batch: int, *, write: bool, progress: bool):
        self.start = start
        self.global_batch = global_batch
        self.losses: list[float] = []
        self.rates: list[float] = []  # clips/s of each step after the session's first
        self.step_times: list[float] = []
        self.file = open(run_dir / METRICS_FILE, "a") if write else None
        self.tb = open_tensorboard(run_dir / TB_DIR) if write else None
        self.bar = None
        if write and progress:
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.05,
                            desc="pretrain", file=sys.stderr)
        self._t = time.perf_counter()

    def record(self, step: int, loss: float, lr: float, grad_norm: float, elapsed: float,
               parts: dict[str, float] | None = None) -> None:
        """Step ``step`` (1-based) is done: time it since the last one and write it out (``parts``: the loss's
        parts, e.g. ``{"latent": ..., "factors": ...}``)."""
        parts = parts or {}
        now = time.perf_counter()
        self.step_times.append(now - self._t)
        rate = self.global_batch / max(now - self._t, 1e-9)
        self._t = now
        self.losses.append(loss)
        if step > self.start + 1:
            self.rates.append(rate)
        if self.file is not None:
            record = {"step": step, "loss": round(loss, 7), "lr": lr, "clips_per_s": round(rate, 2),
                      "elapsed": round(elapsed, 3), "grad_norm": round(grad_norm, 5)}
            record.update({f"loss_{k}": round(v, 7) for k, v in parts.items()})
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as err:  # an open file's error names no path
                raise named_os_error(err, self.file.name) from None
        if self.tb is not None:
            self.tb.add_scalar("loss", loss, step)
            self.tb.add_scalar("lr", lr, step)
            self.tb.add_scalar("clips_per_s", rate, step)
            self.tb.add_scalar("grad_norm", grad_norm, step)
            for k, v in parts.items():
                self.tb.add_scalar(f"loss_{k}", v, step)
        if self.bar is not None:
            recent = self.rates[-20:] or [rate]
            self.bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{sum(recent) / len(recent):.1f}", refresh=False)
            self.bar.update(1)

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    @property
    def final_loss(self) -> float | None:
        """Mean loss of the session's last (up to) 20 steps."""
        last = self.losses[-20:]
        return sum(last) / len(last) if last else None

    @property
    def clips_per_s(self) -> float | None:
        """Mean over the session's steps after the first."""
        return sum(self.rates) / len(self.rates) if self.rates else None

    def close(self) -> None:
        for out in (self.bar, self.file, self.tb):
            if out is not None:
                out.close()

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
