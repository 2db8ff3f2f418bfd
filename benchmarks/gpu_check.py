"""GPU check (issue 15) in one call: pre-training throughput, the world alone, a short pre-training, its transfer.

Prepare here (FLAC copy of the evaluation audio in .gpu/data, wheels of soundfile, soxr, cffi and pycparser in
.whl; both git-ignored): ``python benchmarks/pack_eval_data.py``.  On the device machine, with carry
[".gpu", ".whl"] and a timeout of about 560 s (the package is not installed there, hence PYTHONPATH=src):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site
    .whl/*.whl && export PYTHONPATH=/tmp/site:src || exit; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py
    --data .gpu/data --out $OUT [--objective NAME]

Each part runs in a forked process of its own under a time cap, all within one deadline (``--deadline-s``); a
part that fails, crashes or runs out of time is recorded in the table and the others go on:

* env: the GPU, torch, CUDA;
* throughput (a): ``--preset`` (base) at ``--batch-size`` (256), 10.24 s clips, bf16, fused AdamW: end-to-end
  clips/s (world + fbank + MAE step, with and without the prefetch thread) against the step alone on one batch,
  in interleaved rounds (``pretrain_throughput.measure``), eager then with torch.compile;
* world (b): the world + fbank alone on the device, ``paper`` and ``rich`` (``synth_throughput.ours``);
* pretrain (c): a real pre-training (``--pretrain-preset``, ``--pretrain-world``, ``--objective``) fitted to the
  time left, at most ``--pretrain-minutes``;
* probes: linear probes of the pre-trained encoder, the same network randomly initialised and handcrafted
  log-mel statistics, on FSDD (own split, leave-one-speaker-out) and the ESC-50 part, computed on the device
  (the handcrafted ones while the model pre-trains).

A table is printed last; ``--out`` gets gpu_check.json (everything), gpu_check.md (the table), gpu_check.log
(every part's output), pretrain_config.json, pretrain_metrics.jsonl and reconstructions.png.  ``--tiny``
runs the same parts with a tiny model and short budgets on the CPU: the rehearsal of tests/test_gpu_check.py.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from pretrain_throughput import measure
from synth_throughput import ours

from audiopg.audio.fbank import Fbank, FbankConfig
from audiopg.core.device import resolve_device, set_torch_threads
from audiopg.core.io import atomic_copy, atomic_write_text
from audiopg.eval.datasets import default_data_root, load_dataset
from audiopg.experiments.ablate import (
    PROBE_LAYER,
    PROBE_POOL,
    parse_variant,
    run_config,
)
from audiopg.experiments.transfer import (
    PROBE_SEED,
    PROBE_TASKS,
    json_default,
    parse_tasks,
    probe_run,
)
from audiopg.model.encoder import parse_layer
from audiopg.synth import World, load_world_config
from audiopg.train.pretrain import pretrain
from audiopg.train.run_dir import (
    CONFIG_FILE,
    ENCODER_FILE,
    METRICS_FILE,
    RECON_FILE,
    device_name,
    git_commit,
)

PARTS = ("throughput", "world", "pretrain", "probes")
PROBE_MODELS = ("pretrained", "random", "handcrafted")
PUBLISHED_CLIPS = 2_500_000  # the published pre-training schedule
TARGETS = {"end_to_end_clips_per_s": 2100, "end_to_end_over_model": 0.95, "paper_world_clips_per_s": 20000}
# the same protocols on the project's 2-core CPU (BENCHMARKS.md, "Transfer by linear probe"): a `tiny` model
# pre-trained for 15 min, and the handcrafted features (which the device must reproduce: same data, same features)
REFERENCE_CPU = {"CPU tiny pre-trained": {"fsdd-own": 0.897, "fsdd-loso": 0.445, "esc50": 0.345},
                 "CPU handcrafted": {"fsdd-own": 0.950, "fsdd-loso": 0.561, "esc50": 0.369}}
PRETRAIN_OVERHEAD_S = 60  # pre-training part: start, model build, final save, beyond its minutes budget
MIN_PART_S = 10  # a part with less time than this left before the deadline is skipped
FINAL_RESERVE_S = 5  # kept after the last part: writing the results
WORLD_CLIP_S = 10.24  # the world part's clips (synth_throughput.ours checks 1024 frames of 128 bins)

# the rehearsal on a CPU: a 1-block model over 32 frames x 32 mel bins (as tests/test_ablate.py), short budgets
TINY_SETS = ["model.num_frames=32", "model.num_mel_bins=32", "model.patch_size=8", "model.embed_dim=32",
             "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32", "model.decoder_depth=1",
             "model.decoder_num_heads=2", "world.events.min_seconds=0.1", "stats_clips=8"]
TINY = dict(device="cpu", preset="tiny", batch_size=4, set=TINY_SETS, compile="off", rounds=2, block=2,
            synth_batches="2", synth_seconds=0.05, pretrain_preset="tiny", pretrain_set=[*TINY_SETS, "batch_size=4"],
            pretrain_minutes=0.1, probe_batch_size=8, probe_threads=1, deadline_s=150.0, throughput_cap_s=60.0,
            world_cap_s=30.0, probe_reserve_s=40.0)


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


# ----------------------------------------------------------------------------- the parts (each in its own process)
def part_env(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    device = resolve_device(args.device)
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "device": device_name(device), "commit": git_commit(),
                            "date": time.strftime("%Y-%m-%d")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            info["nvidia_smi"] = describe(err)
    print(json.dumps(info, indent=1))
    return info


def part_throughput(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    """(a): ``pretrain_throughput.measure`` eager, then compiled (if asked); each error kept, the next one tried."""
    result: dict[str, Any] = {"preset": args.preset, "batch_size": args.batch_size, "runs": {}}
    modes = {"both": ["eager", "compile"], "on": ["compile"], "off": ["eager"]}[args.compile]
    for mode in modes:
        print(f"== {args.preset}, batch {args.batch_size}, {mode}", flush=True)
        ns = argparse.Namespace(preset=args.preset, batch_size=args.batch_size, device=args.device,
                                compile=mode == "compile", set=list(args.set), prefetch="both", warmup=3,
                                rounds=args.rounds, block=args.block, data_reps=3, threads=0)
        t0 = time.monotonic()
        try:
            r = measure(ns)
        except Exception as err:  # noqa: BLE001 - recorded, and the next mode still runs
            traceback.print_exc()
            r = {"error": describe(err)}
        else:
            r["schedule_minutes"] = round(PUBLISHED_CLIPS / r["pipeline_clips_per_s"] / 60, 2)
            print(f"end to end {r['pipeline_clips_per_s']:.1f} clips/s ({r['best_pipeline']}), model alone "
                  f"{r['model_clips_per_s']:.1f}, ratio {r['ratio']:.3f}", flush=True)
        r["seconds"] = round(time.monotonic() - t0, 1)
        result["runs"][mode] = r
        save(result)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


def part_world(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    """(b): clips/s of each world + fbank alone at each batch size, the best batch kept."""
    device = resolve_device(args.device)
    result: dict[str, Any] = {}
    for name in args.worlds.split(","):
        row: dict[str, Any] = {"batches": {}}
        result[name] = row
        try:
            config = load_world_config(name, [f"seconds={WORLD_CLIP_S}"])
            world = World(config, device)
            fbank = Fbank(FbankConfig(sample_rate=config.sample_rate, num_mel_bins=128, target_frames=1024)).to(device)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            row["error"] = describe(err)
            continue
        for batch in [int(b) for b in args.synth_batches.split(",")]:
            try:
                rate, clips = ours(world, fbank, batch, args.synth_seconds, device)
                row["batches"][str(batch)] = {"clips_per_s": round(rate, 1), "clips": clips}
                print(f"{name}, batch {batch}: {rate:.1f} clips/s", flush=True)
            except Exception as err:  # noqa: BLE001 - e.g. out of memory at the larger batch
                traceback.print_exc()
                row["batches"][str(batch)] = {"error": describe(err)}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        done = {b: r for b, r in row["batches"].items() if "clips_per_s" in r}
        if done:
            best = max(done, key=lambda b: done[b]["clips_per_s"])
            row.update(clips_per_s=done[best]["clips_per_s"], batch=int(best))
        else:
            row["error"] = "no batch size ran"
        save(result)
    errors = [f"{name}: {row['error']}" for name, row in result.items() if "error" in row]
    if errors:
        result["error"] = "; ".join(errors)
    return result


def pretrain_overrides(args: argparse.Namespace) -> list[str]:
    """``--pretrain-set`` and, only when given, ``objective=NAME`` (so configs without that key still work)."""
    return list(args.pretrain_set) + ([f"objective={args.objective}"] if args.objective else [])


def part_pretrain(args: argparse.Namespace, save: Callable[[dict], None], minutes: float, run_dir: str) -> dict:
    """(c): one real pre-training run, minutes mode; its small outputs are copied to ``--out``."""
    variant = parse_variant(args.pretrain_world)
    overrides = pretrain_overrides(args)
    config = run_config(variant, 0, model_preset=args.pretrain_preset, minutes=minutes, overrides=overrides,
                        device=args.device, progress=False)
    result: dict[str, Any] = {"model_preset": args.pretrain_preset, "world": variant.name,
                              "objective": args.objective, "overrides": overrides, "minutes": round(minutes, 3),
                              "batch_size": config.batch_size, "lr": config.lr, "compile": config.compile}
    save(result)
    run = Path(run_dir)
    try:
        res = pretrain(config, run, log=lambda msg: print(msg, flush=True))
    finally:  # also what a failed run got to write
        for name, dst in ((CONFIG_FILE, "pretrain_config.json"), (METRICS_FILE, "pretrain_metrics.jsonl"),
                          (RECON_FILE, "reconstructions.png")):
            if (run / name).exists():
                atomic_copy(run / name, args.out / dst)
    losses = [json.loads(line)["loss"] for line in (run / METRICS_FILE).read_text().splitlines() if line.strip()]
    result.update(status=res.status, steps=res.step, total_steps=res.total_steps, clips=res.step * config.batch_size,
                  first_loss=losses[0] if losses else None, final_loss=res.final_loss,
                  clips_per_s=res.clips_per_s, wall_s=round(res.wall_s, 1), encoder=str(run / ENCODER_FILE))
    return result


def part_probe(args: argparse.Namespace, save: Callable[[dict], None], task: str, model: str,
               checkpoint: str | None, out_dir: str) -> dict:
    """The linear probe of one model on one task (``probe_run``: pretrained, random or handcrafted)."""
    set_torch_threads(args.probe_threads)
    loader, sub, protocol = PROBE_TASKS[task]
    dataset = load_dataset(loader, args.data / sub, protocol=protocol, seed=PROBE_SEED)
    print(f"{task}: {len(dataset.items)} clips; {dataset.protocol.description}", flush=True)
    res, _ = probe_run(dataset, Path(out_dir), checkpoint=checkpoint, model=model, layer=args.probe_layer,
                       pool=args.probe_pool, device=args.device, batch_size=args.probe_batch_size, cache_dir=False,
                       progress=False, log=lambda msg: print(msg, flush=True))
    return {"task": task, "model": model, "num_items": len(dataset.items), "protocol": dataset.protocol.description,
            **{k: v for k, v in res.items() if k != "results"}}


# ----------------------------------------------------------------------------- running a part in a process
def _child(fn: Callable, args: argparse.Namespace, kwargs: dict, result_path: Path, log_path: Path) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    last: dict = {}

    def save(result: dict) -> None:
        last.clear()
        last.update(result)
        write_json(result_path, result)

    try:
        save(fn(args, save, **kwargs))
    except BaseException as err:  # noqa: BLE001 - recorded for the table
        traceback.print_exc()
        save({**last, "error": describe(err)})
        sys.stdout.flush()
        sys.exit(1)


class Part:
    """One part in a forked process (the parent never touches CUDA, so forking is safe) with a time cap."""

    def __init__(self, name: str, fn: Callable, args: argparse.Namespace, work: Path, cap_s: float, **kwargs: Any):
        self.name, self.cap_s = name, cap_s
        self.result_path, self.log_path = work / "parts" / f"{name}.json", work / "logs" / f"{name}.log"
        self.result_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self.t0 = time.monotonic()
        self.proc = multiprocessing.get_context("fork").Process(
            target=_child, args=(fn, args, kwargs, self.result_path, self.log_path), name=name)
        self.proc.start()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: started (cap {cap_s:.0f} s)", flush=True)

    def wait(self) -> dict:
        self.proc.join(max(0.0, self.t0 + self.cap_s - time.monotonic()))
        timed_out = self.proc.is_alive()
        if timed_out:  # SIGKILL to this one process (torch's compile workers end when their parent does)
            self.proc.kill()
            self.proc.join()
        try:
            result = json.loads(self.result_path.read_text())
        except (OSError, ValueError):
            result = {}
        if timed_out:
            result["error"] = f"timed out after {self.cap_s:.0f} s (killed)"
        elif self.proc.exitcode != 0 and "error" not in result:
            result["error"] = f"the process ended with status {self.proc.exitcode}"
        result["seconds"] = round(time.monotonic() - self.t0, 1)
        status = f"ERROR: {result['error']}" if "error" in result else "done"
        print(f"[{time.strftime('%H:%M:%S')}] {self.name}: {status} ({result['seconds']} s)", flush=True)
        if "error" in result and self.log_path.exists():
            print("  | " + "\n  | ".join(self.log_path.read_text(errors="replace").splitlines()[-15:]), flush=True)
        return result


# ----------------------------------------------------------------------------- the table
def _n(x: float | None, spec: str = ",.1f") -> str:
    return "–" if x is None else format(x, spec)


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def format_table(results: dict) -> str:
    """The summary printed last (and written to gpu_check.md); every part may be missing or have failed."""
    s, p = results["settings"], results["parts"]
    env = p.get("env", {})
    lines = [f"== GPU check (issue 15): {env.get('device', '?')}, torch {env.get('torch', '?')} (CUDA "
             f"{env.get('cuda')}), {env.get('date', '?')}; {results.get('seconds', 0):.0f} s of {s['deadline_s']:.0f}"
             + (" -- tiny rehearsal, targets not meaningful" if s["tiny"] else "") + " =="]

    r = p.get("throughput", {"error": "not run"})
    runs = r.get("runs", {})
    lines.append(f"{'(a) ' + s['preset'] + ', batch ' + str(s['batch_size']) + ', end to end':<46}{'clip':>7}"
                 f"{'clips/s':>10}{'model alone':>13}{'ratio':>7}{'2.5 M clips':>13}")
    for mode, run in runs.items():
        if "error" in run:
            lines.append(f"    {mode:<42}ERROR {run['error']}")
            continue
        lines.append(f"    {mode + ' (' + run['best_pipeline'] + ')':<42}{run['clip_seconds']:>6g}s"
                     f"{_n(run['pipeline_clips_per_s']):>10}{_n(run['model_clips_per_s']):>13}{run['ratio']:>7.3f}"
                     f"{_n(run['schedule_minutes']):>9} min")
    done = [run for run in runs.values() if "error" not in run]
    if done:
        best = max(done, key=lambda run: run["pipeline_clips_per_s"])
        lines.append(f"    target: >= {TARGETS['end_to_end_clips_per_s']:,} clips/s "
                     f"({_mark(best['pipeline_clips_per_s'] >= TARGETS['end_to_end_clips_per_s'])}), ratio >= "
                     f"{TARGETS['end_to_end_over_model']} ({_mark(best['ratio'] >= TARGETS['end_to_end_over_model'])})")
    if "error" in r:
        lines.append(f"    ERROR {r['error']}")

    r = p.get("world", {"error": "not run"})
    lines.append(f"{'(b) world + fbank alone, ' + str(WORLD_CLIP_S) + ' s clips':<53}{'clips/s':>10}{'batch':>13}")
    for name, row in r.items():
        if not isinstance(row, dict):
            continue
        if "clips_per_s" not in row:
            lines.append(f"    {name:<49}ERROR {row.get('error')}")
            continue
        target = (f"   target >= {TARGETS['paper_world_clips_per_s']:,} "
                  f"({_mark(row['clips_per_s'] >= TARGETS['paper_world_clips_per_s'])})" if name == "paper" else "")
        lines.append(f"    {name:<49}{_n(row['clips_per_s']):>10}{row['batch']:>13}{target}")
    if "error" in r:
        lines.append(f"    ERROR {r['error']}")

    r = p.get("pretrain", {"error": "not run"})
    if "model_preset" in r:
        lines.append(f"(c) pre-training: {r['model_preset']} on {r['world']}, objective {r['objective'] or 'default'}, "
                     f"{r['minutes']:g} min budget, batch {r['batch_size']}, lr {r['lr']:g}"
                     + (", compiled" if r["compile"] else ""))
    if "steps" in r:
        lines.append(f"    {r['steps']} steps, {r['clips']:,} clips, loss {_n(r['first_loss'], '.4f')} -> "
                     f"{_n(r['final_loss'], '.4f')}, {_n(r['clips_per_s'])} clips/s, {r['wall_s']:g} s ({r['status']})")
    if "error" in r:
        lines.append(f"(c) pre-training: ERROR {r['error']}")

    tasks = s["tasks"]
    lines.append(f"{'probes, accuracy % (mean ± std over folds)':<46}" + "".join(f"{t:>16}" for t in tasks))
    for model in PROBE_MODELS:
        cells = []
        for t in tasks:
            cell = p.get(f"probe-{t}-{model}")
            cells.append("–" if cell is None else "ERROR" if "error" in cell
                         else f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}")
        lines.append(f"    {model:<42}" + "".join(f"{c:>16}" for c in cells))
    for name, row in REFERENCE_CPU.items():
        lines.append(f"    {name + ' (BENCHMARKS.md)':<42}" + "".join(f"{100 * row[t]:>16.1f}" for t in tasks))

    errors = [(k, v["error"]) for k, v in p.items() if "error" in v]
    if errors:
        lines.append("errors (each part's output is in gpu_check.log):")
        lines += [f"    {k}: {e}" for k, e in errors]
    lines.append(f"full results: {s['out']}/gpu_check.json")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the whole check
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_root(), help="evaluation data (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("out/gpu_check"), help="results folder (default: %(default)s)")
    p.add_argument("--work", type=Path, help="scratch folder for runs and logs (default: a temp folder, removed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of: " + ", ".join(PARTS))
    p.add_argument("--deadline-s", type=float, default=480.0, help="the whole check ends by then (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="a rehearsal on the CPU: tiny model, short budgets")
    g = p.add_argument_group("(a) throughput")
    g.add_argument("--preset", default="base")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as for pretrain")
    g.add_argument("--compile", choices=("both", "on", "off"), default="both", help="eager, compiled, or both")
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--block", type=int, default=8)
    g.add_argument("--throughput-cap-s", type=float, default=170.0)
    g = p.add_argument_group("(b) world alone")
    g.add_argument("--worlds", default="paper,rich")
    g.add_argument("--synth-batches", default="256,1024", help="batch sizes tried; the best is kept")
    g.add_argument("--synth-seconds", type=float, default=3.0, help="time per world and batch size")
    g.add_argument("--world-cap-s", type=float, default=60.0)
    g = p.add_argument_group("(c) pre-training and probes")
    g.add_argument("--pretrain-preset", default="base")
    g.add_argument("--pretrain-world", default="paper", help="a world preset or ablation variant (rich-no-room)")
    g.add_argument("--objective", help="the pre-training objective (passed as objective=NAME only when given)")
    g.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--pretrain-minutes", type=float, default=3.0, help="at most; less if time is short")
    g.add_argument("--tasks", default=",".join(PROBE_TASKS))
    g.add_argument("--probe-batch-size", type=int, default=64)
    g.add_argument("--probe-layer", type=parse_layer, default=PROBE_LAYER, help="as audiopg probe (default: %(default)s)")
    g.add_argument("--probe-pool", default=PROBE_POOL, help="as audiopg probe (default: %(default)s)")
    g.add_argument("--probe-threads", type=int, default=2, help="torch CPU threads of each probe process")
    g.add_argument("--probe-reserve-s", type=float, default=120.0, help="time kept after pre-training for the probes")
    pre, _ = p.parse_known_args(argv)
    if pre.tiny:
        p.set_defaults(**TINY)
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part {unknown[0]!r} (known: {', '.join(PARTS)})")
    args.tasks = parse_tasks(args.tasks)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + args.deadline_s
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results: dict[str, Any] = {"settings": settings, "targets": TARGETS, "reference_cpu": REFERENCE_CPU, "parts": {}}
    log_parts: list[Part] = []

    def left() -> float:
        return deadline - time.monotonic() - FINAL_RESERVE_S

    def record(part: Part) -> None:
        results["parts"][part.name] = part.wait()
        log_parts.append(part)
        write_outputs(args.out, results, log_parts, t0)

    def start(name: str, fn: Callable, cap_s: float, **kwargs: Any) -> Part | None:
        cap_s = min(cap_s, left())
        if cap_s < MIN_PART_S:
            results["parts"][name] = {"error": "skipped: no time left before the deadline"}
            return None
        return Part(name, fn, args, work, cap_s, **kwargs)

    def run(name: str, fn: Callable, cap_s: float, **kwargs: Any) -> None:
        part = start(name, fn, cap_s, **kwargs)
        if part is not None:
            record(part)

    run("env", part_env, 60.0)
    if "throughput" in args.parts:
        run("throughput", part_throughput, args.throughput_cap_s)
    if "world" in args.parts:
        run("world", part_world, args.world_cap_s)
    background = []
    if "probes" in args.parts:  # the handcrafted probes use the CPU: they run while the model pre-trains
        background = [start(f"probe-{t}-handcrafted", part_probe, left(), task=t, model="handcrafted",
                            checkpoint=None, out_dir=str(work / "probes" / t / "handcrafted")) for t in args.tasks]
    encoder = None
    if "pretrain" in args.parts:
        budget_s = left() - args.probe_reserve_s - PRETRAIN_OVERHEAD_S
        if budget_s < MIN_PART_S:
            results["parts"]["pretrain"] = {"error": "skipped: no time left before the deadline"}
        else:
            minutes = min(args.pretrain_minutes, budget_s / 60)
            run("pretrain", part_pretrain, minutes * 60 + PRETRAIN_OVERHEAD_S, minutes=minutes,
                run_dir=str(work / "run"))
            enc = results["parts"]["pretrain"].get("encoder")
            encoder = enc if enc and Path(enc).exists() else None
    if "probes" in args.parts:  # one process per task and model, all at once
        foreground = []
        for t in args.tasks:
            for m in ("pretrained", "random"):
                if encoder is None:
                    results["parts"][f"probe-{t}-{m}"] = {"error": "skipped: no encoder (pre-training did not finish)"}
                    continue
                foreground.append(start(f"probe-{t}-{m}", part_probe, left(), task=t, model=m, checkpoint=encoder,
                                        out_dir=str(work / "probes" / t / m)))
        for part in foreground + background:
            if part is not None:
                record(part)
    write_outputs(args.out, results, log_parts, t0)
    print()
    print(format_table(results))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any("error" in r for r in results["parts"].values()) else 0


def write_outputs(out: Path, results: dict, parts: list[Part], t0: float) -> None:
    """gpu_check.json, gpu_check.md and gpu_check.log in ``out`` (rewritten after every part)."""
    results["seconds"] = round(time.monotonic() - t0, 1)
    write_json(out / "gpu_check.json", results)
    atomic_write_text(out / "gpu_check.md", "```\n" + format_table(results) + "\n```\n")
    atomic_write_text(out / "gpu_check.log", "".join(
        f"===== {part.name}\n" + (part.log_path.read_text(errors="replace") if part.log_path.exists() else "")
        for part in parts))


if __name__ == "__main__":
    sys.exit(main())
