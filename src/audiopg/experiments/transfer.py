"""Transfer of pre-trained encoders, one run folder at a time: pre-train (or reuse, or resume), probe and fine-tune
on the shared evaluation tasks, reusing every result already on disk.

Shared by the world ablation (experiments/ablate.py) and the transfer curve (experiments/curve.py);
docs/experiments.md ("Shared machinery") has the details.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from audiopg.core.config import to_dict
from audiopg.core.errors import AudioPGError, ConfigError
from audiopg.core.io import atomic_write_json, file_sha256, output_folder
from audiopg.eval.datasets import Dataset, load_dataset
from audiopg.eval.finetune import Recipe, run_finetune
from audiopg.eval.metrics import mean_std
from audiopg.eval.probe import run_probe
from audiopg.model.checkpoint import resolve_encoder_path
from audiopg.train.config import PretrainConfig, build_pretrain_config
from audiopg.train.pretrain import pretrain
from audiopg.train.run_dir import (
    CONFIG_FILE,
    ENCODER_FILE,
    METRICS_FILE,
    RECON_FILE,
    STATE_FILE,
    check_resume_config,
    load_run_config,
)

__all__ = [
    "FINETUNE_RECIPES",
    "HANDCRAFTED",
    "LOAD_FILE",
    "PROBE_SEED",
    "PROBE_TASKS",
    "RunInterrupted",
    "build_run_config",
    "check_existing_run",
    "finetune_run",
    "json_default",
    "load_tasks",
    "parse_tasks",
    "probe_run",
    "seed_stats",
    "train_run",
]

# task name -> (dataset loader, folder below the data root, FSDD protocol); as in benchmarks/transfer_cpu.py
PROBE_TASKS: dict[str, tuple[str, str, str | None]] = {
    "fsdd-own": ("fsdd", "fsdd", "own"),
    "fsdd-loso": ("fsdd", "fsdd", "loso"),
    "esc50": ("esc50", "esc50-fold4", None),
}
TASK_ALIASES = {"esc50-part": "esc50"}
# tasks that are also fine-tuned (the transfer curve, at its largest budget) -> their bundled recipe
FINETUNE_RECIPES = {"fsdd-loso": "fsdd-tiny", "esc50": "esc50-tiny"}

HANDCRAFTED = "handcrafted"
PROBE_SEED = 0  # the probe's folds and inits stay fixed, so the spread over seeds is the pre-training's
LOAD_FILE = "loadavg.json"  # in a run folder: the 1-minute load average at the start and end of each session


class RunInterrupted(AudioPGError):
    """A pre-training run was stopped by a signal (its state is saved); rerun the command to continue."""

    def __init__(self, message: str, signal: int | None):
        super().__init__(message)
        self.signal = signal


# ----------------------------------------------------------------------------- tasks and data
def parse_tasks(text: str | Sequence[str] | None) -> list[str]:
    """``"fsdd-own,esc50-part"`` -> ["fsdd-own", "esc50"]; None: every task; unknown names raise ConfigError."""
    if text is None:
        return list(PROBE_TASKS)
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s and s.strip()]
    out = []
    for n in names:
        n = TASK_ALIASES.get(n, n)
        if n not in PROBE_TASKS:
            raise ConfigError("tasks", f"unknown task {n!r} (known: {', '.join(PROBE_TASKS)})")
        out.append(n)
    if not out:
        raise ConfigError("tasks", "no task given")
    return list(dict.fromkeys(out))


def load_tasks(data_root: Path, tasks: Sequence[str], log: Callable[[str], None]) -> tuple[dict[str, Dataset], dict]:
    """Each task's dataset (those whose folder is absent are skipped with a note) and a summary per task."""
    datasets, info = {}, {}
    for t in tasks:
        loader, sub, protocol = PROBE_TASKS[t]
        root = data_root / sub
        if not root.exists():
            note = f"no data: {root} not found"
            log(f"note: {t} skipped ({note})")
            info[t] = {"data": str(root), "skipped": note}
            continue
        ds = load_dataset(loader, root, protocol=protocol, seed=PROBE_SEED)
        datasets[t] = ds
        info[t] = {"data": str(root), "skipped": None, "metric": ds.metric, "num_items": len(ds.items),
                   "protocol": ds.protocol.description, "notes": list(ds.notes)}
        log(f"{t}: {len(ds.items)} clips; {ds.protocol.description}")
    return datasets, info


# ----------------------------------------------------------------------------- pre-training
def build_run_config(overrides: Sequence[str], seed: int, *, model_preset: str, minutes: float | None,
                     steps: int | None, device: str, progress: bool) -> PretrainConfig:
    """The resolved config of one run: ``overrides`` (``--set``), then the flags (model preset, budget, seed,
    device).  The caller refuses overrides of what it sets itself."""
    flags = {"preset": model_preset, "steps": steps, "minutes": minutes, "seed": int(seed), "device": device,
             "progress": progress}
    return build_pretrain_config(None, list(overrides), flags)


def check_existing_run(config: PretrainConfig, run_dir: Path) -> None:
    """A run already started in ``run_dir`` must have been started with ``config`` (CheckpointError names the key)."""
    if (run_dir / CONFIG_FILE).exists() and ((run_dir / ENCODER_FILE).exists() or (run_dir / STATE_FILE).exists()):
        check_resume_config(load_run_config(run_dir)[0], config, run_dir)


def _sessions(run_dir: Path) -> list[dict]:
    try:
        return list(json.loads((run_dir / LOAD_FILE).read_text())["sessions"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return []


def _load_span(sessions: list[dict]) -> dict | None:
    """The load average when the run started and when it ended (first and last session)."""
    if not sessions:
        return None
    return {"start": sessions[0]["load_start"], "end": sessions[-1]["load_end"], "sessions": len(sessions),
            "train_s": round(sum(s["wall_s"] for s in sessions), 1)}


def train_run(config: PretrainConfig, run_dir: Path, log: Callable[[str], None]) -> dict:
    """Pre-train (or reuse / resume) one run; returns {status, steps, wall_s, load}.

    ``load``: the 1-minute load average (``os.getloadavg``) at the start of the run's first session and at the
    end of its last, the number of sessions and their summed wall time (None for a run made before this record).
    Raises :class:`RunInterrupted` when a signal stops the run.
    """
    if (run_dir / ENCODER_FILE).exists():
        saved, data = load_run_config(run_dir)
        check_resume_config(saved, config, run_dir)
        log(f"  finished already: reusing {run_dir / ENCODER_FILE}")
        return {"status": "reused", "steps": data.get("plan", {}).get("total_steps"), "wall_s": 0.0,
                "load": _load_span(_sessions(run_dir))}
    resumed = (run_dir / STATE_FILE).exists()
    if resumed:
        log(f"  unfinished: resuming {run_dir}")
        sessions = _sessions(run_dir)
    else:
        if (run_dir / CONFIG_FILE).exists():  # stopped before its first save: nothing to resume
            log(f"  {run_dir} stopped before saving any state: starting it again")
            for name in (CONFIG_FILE, METRICS_FILE, RECON_FILE, LOAD_FILE):
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tb", ignore_errors=True)
        sessions = []
    t0, load0 = time.time(), os.getloadavg()[0]
    result = pretrain(config, run_dir, resume=resumed, log=log)
    wall = round(time.time() - t0, 1)
    sessions.append({"status": result.status, "load_start": load0, "load_end": os.getloadavg()[0], "wall_s": wall})
    if (run_dir / CONFIG_FILE).exists():
        atomic_write_json(run_dir / LOAD_FILE, {"sessions": sessions})
    if result.status == "interrupted":
        raise RunInterrupted(f"stopped during {run_dir} (state saved); run the same command again to continue",
                             result.signal)
    return {"status": "resumed" if resumed else "trained", "steps": result.total_steps, "wall_s": wall,
            "load": _load_span(sessions)}


# ----------------------------------------------------------------------------- probing and fine-tuning
def _same_data(res: dict, dataset: Dataset) -> bool:
    want = json.loads(json.dumps(dataset.summary()))
    got = res.get("dataset", {})
    return all(got.get(k) == want[k] for k in ("root", "num_items", "protocol"))


def _saved(path: Path) -> dict | None:
    try:
        return json.loads((path / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def probe_run(dataset: Dataset, out: Path, *, checkpoint: Path | None, model: str = "pretrained", layer: Any = -1,
              pool: str = "mean", device: str, batch_size: int, cache_dir: Any, progress: bool,
              log: Callable[[str], None]) -> tuple[dict, bool]:
    """Probe one model (``pretrained``: the encoder of ``checkpoint``; ``random``: its architecture and
    preprocessing at random init; ``handcrafted``: the log-mel baseline, no checkpoint) on ``dataset`` into
    ``out``, or reuse the results there when they were made with this model, checkpoint, pooling and data.
    Returns ({mean, std, folds, metric, results}, reused)."""

    sha = None if model == HANDCRAFTED else file_sha256(resolve_encoder_path(checkpoint))
    res = _saved(out)
    opts = (res or {}).get("options", {})
    reused = (res is not None and _same_data(res, dataset) and model in res.get("models", {})
              and opts.get("seed") == PROBE_SEED
              and (model == HANDCRAFTED or (opts.get("checkpoint_sha256") == sha and opts.get("layer") == layer
                                            and opts.get("pool") == pool)))
    if not reused:  # results made otherwise are replaced whole
        with output_folder(out, overwrite=True, kind="probe results", marker="results.json") as tmp:
            res = run_probe(dataset, tmp, checkpoint=None if model == HANDCRAFTED else checkpoint,
                            baselines=[] if model == "pretrained" else [model], pretrained=model == "pretrained",
                            layer=layer, pool=pool, device=device, batch_size=batch_size, seed=PROBE_SEED,
                            cache_dir=cache_dir, progress=progress, log=log)
    m = res["models"][model]
    return {"mean": m["mean"], "std": m["std"], "folds": [f["score"] for f in m["folds"]],
            "metric": m["metric"], "results": str(out / "results.json")}, reused


def finetune_run(dataset: Dataset, out: Path, *, checkpoint: Path, recipe: Recipe, device: str, progress: bool,
                 log: Callable[[str], None]) -> tuple[dict, bool]:
    """Fine-tune the encoder of ``checkpoint`` and the same network from random init with ``recipe`` on
    ``dataset`` into ``out`` (:func:`~audiopg.eval.finetune.run_finetune`), or reuse the results there when
    they were made with this checkpoint, recipe and data.  Returns ({finetuned, random, metric, results},
    reused), each model as {mean, std, folds}."""

    sha = file_sha256(resolve_encoder_path(checkpoint))
    res = _saved(out)
    reused = (res is not None and _same_data(res, dataset)
              and res.get("options", {}).get("checkpoint_sha256") == sha
              and res.get("recipe") == json.loads(json.dumps(to_dict(recipe)))
              and {"finetuned", "random"} <= set(res.get("models", {})))
    if not reused:  # results made otherwise (other splits' checkpoints too) are replaced whole
        with output_folder(out, overwrite=True, kind="fine-tuning results", marker="recipe.yaml") as tmp:
            res = run_finetune(dataset, checkpoint, recipe, tmp, device=device, baselines=["random"],
                               progress=progress, log=log)
    summary: dict[str, Any] = {"metric": dataset.metric, "results": str(out / "results.json")}
    for name in ("finetuned", "random"):
        m = res["models"][name]
        summary[name] = {"mean": m["mean"], "std": m["std"], "folds": [f["score"] for f in m["folds"]]}
    return summary, reused


# ----------------------------------------------------------------------------- summaries
def seed_stats(values: Sequence[float]) -> dict:
    """{mean, std (population), n_seeds, seeds} of one score per seed."""
    m, s = mean_std(list(values))
    return {"mean": m, "std": s, "n_seeds": len(values), "seeds": list(values)}


def json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
