"""The run folder: its files (config.json, metrics.jsonl, state.pt, the encoder), resume checks, seeds, metadata.

Layout and resume rules: docs/training.md ("The run folder", "Resume").  Only rank 0 writes here.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch

from audiopg.audio.fbank import FbankConfig, FbankStats
from audiopg.core.config import to_dict, write_json
from audiopg.core.errors import CheckpointError, ConfigError
from audiopg.core.io import (
    atomic_write,
    atomic_write_bytes,
    is_temp,
    make_folder,
    remove_temp_files,
)
from audiopg.model.checkpoint import save_encoder
from audiopg.model.config import ModelConfig
from audiopg.synth import WorldConfig
from audiopg.train.config import RESUME_MAY_CHANGE, PretrainConfig

__all__ = [
    "CONFIG_FILE", "ENCODER_FILE", "METRICS_FILE", "RECON_FILE", "STATE_FILE", "STATE_FORMAT", "TB_DIR",
    "check_resume_config", "derive_seed", "describe_run", "device_name", "git_commit", "load_run_config",
    "load_state", "open_run", "prepare_run_dir", "rank_rng_state", "restore_rank_rng", "run_folder_kind", "save_state",
    "truncate_metrics", "write_config_json", "write_encoder",
]

STATE_FORMAT = 1
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
ENCODER_FILE = "encoder.safetensors"
RECON_FILE = "reconstructions.png"
TB_DIR = "tb"


# ----------------------------------------------------------------------------- seeds and metadata
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- opening a run
def run_folder_kind(run_dir: Path) -> str:
    """``new`` (absent, or nothing but temp files), ``run`` (a run with a saved state), ``unsaved`` (a run stopped
    before its first save), or ``foreign`` (anything else: not a run folder)."""
    entries = [p for p in run_dir.iterdir() if not is_temp(p)] if run_dir.is_dir() else []
    if not entries:
        return "new"
    if not (run_dir / CONFIG_FILE).is_file():
        return "foreign"
    if (run_dir / STATE_FILE).exists():
        return "run"
    if (run_dir / ENCODER_FILE).exists():  # a run saves its state before its encoder: this is a model folder
        return "foreign"
    try:
        load_run_config(run_dir)
    except CheckpointError:
        return "foreign"
    return "unsaved"


def open_run(run_dir: Path, config: PretrainConfig, resume: bool, world_size: int, *, overwrite: bool = False,
             log: Callable[[str], None] = print) -> dict | None:
    """The run folder of a session: returns the checked ``state.pt`` to resume, or None to start afresh
    (then :func:`prepare_run_dir` clears the folder); changes nothing.

    Fresh (``--out``): the folder must be new, or a run that stopped before its first save (started again), or
    with ``overwrite`` a run (replaced whole).  Resume: a run with a state, or one stopped before its first save
    (started again from its own config).  Anything else is refused, naming the folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: is a file, not a run folder")
    kind = run_folder_kind(run_dir)
    if resume and kind in ("new", "foreign"):
        load_run_config(run_dir)  # its error says what is missing
    if kind == "foreign":
        names = ", ".join(sorted(p.name for p in run_dir.iterdir())[:3])
        raise CheckpointError(f"{run_dir}: not a run folder (it holds {names}); "
                              + ("it cannot be resumed" if resume else "choose another --out"))
    if kind == "run" and not resume and not overwrite:
        raise CheckpointError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                              "start it again from nothing with --overwrite, or choose another --out")
    if kind == "run" and resume:
        saved, _ = load_run_config(run_dir)
        check_resume_config(saved, config, run_dir)
        state = load_state(run_dir / STATE_FILE)
        if state["plan"]["world_size"] != world_size:
            raise CheckpointError(f"world_size: the run in {run_dir} used {state['plan']['world_size']} "
                                  f"process(es), this one has {world_size}")
        return state
    if kind == "unsaved":
        if resume:
            check_resume_config(load_run_config(run_dir)[0], config, run_dir)
        log(f"{run_dir}: the run stopped before its first save; starting it again")
    elif kind == "run":
        log(f"{run_dir}: replacing the run there (--overwrite)")
    return None


def prepare_run_dir(run_dir: Path, fresh: bool) -> None:
    """Rank 0, once every rank has opened the run: create the folder, remove the temp files that a kill left
    and, for a start afresh, the run there (whole when it had a state; else only what a run writes before its
    first save)."""
    kind = run_folder_kind(run_dir) if fresh else "new"
    if kind == "run":
        shutil.rmtree(run_dir)
    elif kind == "unsaved":
        for name in (CONFIG_FILE, METRICS_FILE, RECON_FILE):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / TB_DIR, ignore_errors=True)
    make_folder(run_dir)
    remove_temp_files(run_dir)


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
    """Raise CheckpointError naming the first key (other than :data:`RESUME_MAY_CHANGE`) where ``requested``
    differs from the run's own config."""
    a, b = saved.to_dict(), requested.to_dict()
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


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines of steps after the saved state (they will be computed again)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
            if json.loads(line)["step"] <= step:
                keep.append(line)
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


# ----------------------------------------------------------------------------- state.pt
def rank_rng_state(rank: int, world_seed: int, mask_seed: int, world_rng: torch.Tensor,
                   mask_generator: torch.Generator, device: torch.device) -> dict:
    """One rank's random state now: its world generator at ``world_rng`` (the state before the next batch to
    draw, whatever the prefetch thread has drawn since), its mask generator, torch's CPU/CUDA and Python's RNG."""
    return {
        "rank": rank,
        "world_seed": world_seed,
        "mask_seed": mask_seed,
        "world_rng": world_rng.cpu(),
        "mask_rng": mask_generator.get_state().cpu(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device).cpu() if device.type == "cuda" else None,
        "python_rng": random.getstate(),
    }


def restore_rank_rng(mine: dict, world_generator: torch.Generator, mask_generator: torch.Generator,
                     device: torch.device) -> None:
    """Set the generators and global RNGs back to a :func:`rank_rng_state` (older states' extra keys ignored)."""
    world_generator.set_state(mine["world_rng"])
    mask_generator.set_state(mine["mask_rng"])
    torch.set_rng_state(mine["torch_rng"])
    if device.type == "cuda" and mine.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(mine["cuda_rng"], device)
    if mine.get("python_rng") is not None:
        py = mine["python_rng"]
        random.setstate((py[0], tuple(py[1]), py[2]))


def save_state(run_dir: Path, state: dict) -> None:
    """Write ``state.pt`` atomically (a temp file renamed over it): a kill mid-save leaves the last complete one."""
    atomic_write(run_dir / STATE_FILE, lambda f: torch.save({"format": STATE_FORMAT, **state}, f))


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


# ----------------------------------------------------------------------------- config.json and the encoder
def describe_run(model_config: ModelConfig, world_config: WorldConfig, fbank_config: FbankConfig,
                 stats: FbankStats) -> dict:
    """What a run computes beside its training config, as JSON: its model, world and fbank configs and stats."""
    return {"model": to_dict(model_config), "world": world_config.to_dict(), "fbank": to_dict(fbank_config),
            "fbank_stats": stats.to_dict()}


def write_config_json(run_dir: Path, config: PretrainConfig, plan: dict, described: dict,
                      device: torch.device) -> None:
    """``config.json``: the training config, the plan, :func:`describe_run`, the device and the commit."""
    write_json(run_dir / CONFIG_FILE, {
        "format": STATE_FORMAT,
        "train": config.to_dict(),
        "plan": plan,
        **described,
        "device": device_name(device),
        "git_commit": git_commit(),
        "created": _now(),
    })


def write_encoder(run_dir: Path, encoder: torch.nn.Module, config: PretrainConfig, plan: dict, described: dict,
                  device: torch.device, step: int, clips_seen: int, wall_time_s: float) -> Path:
    """The encoder's weights with what it needs to embed (see :mod:`audiopg.model.checkpoint`) and the run's story."""
    path = run_dir / ENCODER_FILE
    save_encoder(path, encoder.state_dict(), {
        "model": described["model"],
        "fbank": described["fbank"],
        "fbank_stats": described["fbank_stats"],
        "world": described["world"],
        "embedding": {"layer": config.embedding_layer, "pool": config.embedding_pool},
        "step": step,
        "clips_seen": clips_seen,
        "git_commit": git_commit(),
        "train": {**config.to_dict(), "plan": plan},
        "wall_time_s": round(wall_time_s, 3),
        "device": device_name(device),
        "created": _now(),
    })
    return path
