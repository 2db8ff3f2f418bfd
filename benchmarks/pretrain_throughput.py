"""Pre-training throughput: the whole pipeline against the model alone, in one process.

* pipeline: clips synthesized by the world, log-mel on the same device, normalized,
  then one training step (forward, backward, grad clipping, AdamW) -- the trainer's
  code path (:class:`~audiopg.train.prefetch.Prefetcher` + :class:`~audiopg.train.step.StepRunner`,
  with its per-step loss read-back).
* model: the same training step on one pre-made batch (masks are still drawn).

Same model, batch size, precision (bf16 autocast on CUDA) and optimizer.  The two
are measured in short back-to-back blocks (``--block`` steps each, the order
rotated every round), so that drifts of a shared machine hit both alike; each
round gives a ratio of mean step times, and the median over ``--rounds`` rounds
is printed last as ``pipeline/model: X.XX`` (1.00 = data costs nothing; the
better of the two pipelines).  Also
prints where the data time goes (world synthesis and fbank, per clip, measured
alone).

    python benchmarks/pretrain_throughput.py --preset tiny --batch-size 64
    python benchmarks/pretrain_throughput.py --preset base --batch-size 128 --device cuda --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from audiopg.audio.fbank import FbankStats
from audiopg.core.device import DistInfo, setup_distributed
from audiopg.model.factor_heads import world_factor_targets
from audiopg.train.config import build_pretrain_config
from audiopg.train.data import SynthSpectrograms
from audiopg.train.prefetch import Prefetcher
from audiopg.train.run_dir import device_name
from audiopg.train.step import StepRunner, build_model, build_optimizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    flags = {"preset": args.preset, "batch_size": args.batch_size, "steps": 1, "device": args.device,
             "compile": True if args.compile else None}
    config = build_pretrain_config(None, args.set, flags)
    _, device = setup_distributed(config.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg = config.model_config()
    world_cfg = config.world_config(model_cfg)
    fbank_cfg = config.fbank_config(model_cfg, world_cfg)
    # normalization constants do not change the cost; the trainer measures them on the world
    targets = world_factor_targets(world_cfg) if config.objective_config().factors else ()
    data = SynthSpectrograms(world_cfg, fbank_cfg, FbankStats(mean=-4.6, std=4.0), device, targets)
    model = build_model(config, device, targets)
    runner = StepRunner(model, build_optimizer(model, config, device), config, device, DistInfo())
    n = config.batch_size
    gen = data.generator(1)
    mask_gen = torch.Generator(device=device).manual_seed(2)

    # where the data time goes, measured alone
    synth_t, fbank_t = [], []
    for _ in range(args.data_reps + 1):
        sync(device)
        t0 = time.perf_counter()
        audio = data.world.sample(n, gen).audio
        sync(device)
        t1 = time.perf_counter()
        data.stats.normalize(data.fbank(audio))
        sync(device)
        t2 = time.perf_counter()
        synth_t.append(t1 - t0)
        fbank_t.append(t2 - t1)
    synth_ms = statistics.median(synth_t[1:]) / n * 1e3
    fbank_ms = statistics.median(fbank_t[1:]) / n * 1e3

    x0 = data.draw(n, gen)

    def step(x: torch.Tensor) -> None:
        loss, norm, _ = runner.forward_backward(x, mask_gen)
        float(loss.item())
        float(norm.item())
        runner.apply(config.lr, 0, 1)

    for _ in range(args.warmup):  # allocations, autotuning, compilation
        step(x0)
    sync(device)

    modes = ["prefetch", "inline"] if args.prefetch == "both" else [args.prefetch]
    model_times: list[float] = []
    pipe_times: dict[str, list[float]] = {m: [] for m in modes}
    round_ratios: dict[str, list[float]] = {m: [] for m in modes}
    cpu_s: dict[str, float] = {k: 0.0 for k in ["model", *modes]}  # process CPU time (all threads)
    blocks = ["model", *modes]
    for r in range(args.rounds):
        block_mean: dict[str, float] = {}
        for kind in blocks[r % len(blocks):] + blocks[: r % len(blocks)]:  # rotate the order every round
            times = []
            c0 = time.process_time()
            if kind == "model":
                for _ in range(args.block):
                    t = time.perf_counter()
                    step(x0)
                    times.append(time.perf_counter() - t)
                model_times += times
            else:
                prefetch = Prefetcher(data, n, gen, enabled=kind == "prefetch")
                try:
                    for i in range(args.block + 1):
                        t = time.perf_counter()
                        x, _, _ = prefetch.next()
                        step(x)
                        if i > 0:  # the first step of a block waits for a cold batch
                            times.append(time.perf_counter() - t)
                finally:
                    prefetch.close()
                pipe_times[kind] += times
            cpu_s[kind] += (time.process_time() - c0) / (len(times) + (kind != "model"))
            block_mean[kind] = statistics.mean(times)
        for mode in modes:  # blocks of one round ran back to back, under the same machine load
            round_ratios[mode].append(block_mean["model"] / block_mean[mode])
    model_med = statistics.median(model_times)
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "preset": config.preset,
        "model": config.model,
        "batch_size": n,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "compile": config.compile,
        "clip_seconds": world_cfg.seconds,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # other work on the machine skews CPU timings
        "block": args.block,
        "synth_ms_per_clip": round(synth_ms, 4),
        "fbank_ms_per_clip": round(fbank_ms, 4),
        "model_step_s_median": round(model_med, 6),
        "model_step_s_mean": round(statistics.mean(model_times), 6),
        "model_step_s_all": [round(t, 5) for t in model_times],
        "model_clips_per_s": round(n / model_med, 2),
        "model_cpu_s_per_step": round(cpu_s["model"] / args.rounds, 6),
        "pipeline": {},
    }
    for mode, times in pipe_times.items():
        med = statistics.median(times)
        result["pipeline"][mode] = {
            "step_s_median": round(med, 6),
            "step_s_mean": round(statistics.mean(times), 6),
            "step_s_all": [round(t, 5) for t in times],
            "clips_per_s": round(n / med, 2),
            "ratio": round(statistics.median(round_ratios[mode]), 4),
            "round_ratios": [round(x, 4) for x in round_ratios[mode]],
            "ratio_of_medians": round(model_med / med, 4),
            "cpu_s_per_step": round(cpu_s[mode] / args.rounds, 6),
        }
    best = max(result["pipeline"], key=lambda m: result["pipeline"][m]["ratio"])
    result["best_pipeline"] = best
    result["pipeline_clips_per_s"] = result["pipeline"][best]["clips_per_s"]
    result["ratio"] = result["pipeline"][best]["ratio"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as for pretrain")
    p.add_argument("--prefetch", choices=["prefetch", "inline", "both"], default="both",
                   help="pipeline with the background synthesis thread, inline synthesis, or both")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--block", type=int, default=4)
    p.add_argument("--data-reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    r = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    print(f"device: {r['device']}, torch {r['torch']}, {r['threads']} threads, "
          f"load average {r['loadavg_1min'][0]:.2f} -> {r['loadavg_1min'][1]:.2f}")
    print(f"model {r['preset']} {r['model']}, batch {r['batch_size']}, {r['clip_seconds']:g} s clips, {r['precision']}")
    print(f"data alone: synthesis {r['synth_ms_per_clip']:.3f} ms/clip, fbank {r['fbank_ms_per_clip']:.3f} ms/clip")
    print(f"model only: {r['model_clips_per_s']:.1f} clips/s ({r['model_step_s_median'] * 1e3:.1f} ms/step median, "
          f"{r['model_cpu_s_per_step']:.3f} CPU-s/step)")
    for mode, q in r["pipeline"].items():
        spread = f"{min(q['round_ratios']):.2f}..{max(q['round_ratios']):.2f}"
        print(f"pipeline ({mode}): {q['clips_per_s']:.1f} clips/s ({q['step_s_median'] * 1e3:.1f} ms/step median), "
              f"ratio {q['ratio']:.3f} (median of {len(q['round_ratios'])} rounds, {spread}; "
              f"of medians {q['ratio_of_medians']:.3f}; {q['cpu_s_per_step']:.3f} CPU-s/step)")
    print(f"pipeline/model: {r['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
