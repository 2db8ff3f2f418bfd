"""Clips per second of the world, synthesis plus fbank, against a per-clip NumPy baseline.

Both sides make 10.24 s clips of the paper's world and their 128-bin log-mel
features, in this process, with the same torch thread count:

* ours: ``World.sample`` on a batch, then one batched ``Fbank`` call;
* baseline: ``reference_numpy_synth.synthesize_clip`` (a faithful per-clip NumPy/SciPy
  re-implementation of the published synthesizer), then the fbank of that one clip,
  one clip at a time, as the published data loader does.

Prints a table, then ``speedup: X.XX`` (ours / baseline) last.

    python benchmarks/synth_throughput.py [--threads 2] [--batch 32] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference_numpy_synth import synthesize_clip  # noqa: E402

from audiopg.audio.fbank import Fbank, FbankConfig  # noqa: E402
from audiopg.synth import World, load_world_config  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(world: World, fbank: Fbank, batch: int, seconds_budget: float, device: torch.device) -> tuple[float, int]:
    gen = world.generator(0)
    fbank(world.sample(batch, gen).audio)  # warm-up (FFT plans, allocator)
    sync(device)
    clips, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds_budget or clips < 2 * batch:
        feats = fbank(world.sample(batch, gen).audio)
        clips += batch
    sync(device)
    assert feats.shape[1:] == (1024, 128)
    return clips / (time.perf_counter() - start), clips


def baseline(fbank: Fbank, seconds_budget: float) -> tuple[float, int]:
    rng = np.random.default_rng(0)
    fbank(torch.from_numpy(synthesize_clip(rng))[None])  # warm-up
    clips, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds_budget or clips < 8:
        wave = synthesize_clip(rng, seconds=10.24, sample_rate=16000)
        fbank(torch.from_numpy(wave)[None])
        clips += 1
    return clips / (time.perf_counter() - start), clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads for both sides (default 2)")
    p.add_argument("--batch", type=int, default=32, help="clips per batch for ours (default 32)")
    p.add_argument("--seconds", type=float, default=20.0, help="time budget per side (default 20 s)")
    p.add_argument("--device", default="cpu", help="device for ours (the baseline always runs on CPU)")
    p.add_argument("--skip-baseline", action="store_true", help="measure ours only (e.g. on a GPU)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    world = World(load_world_config("paper", ["seconds=10.24"]), device)
    fb_cfg = FbankConfig(sample_rate=16000, num_mel_bins=128, target_frames=1024)
    ours_rate, ours_clips = ours(world, Fbank(fb_cfg).to(device), args.batch, args.seconds, device)
    result = {"device": str(device), "threads": args.threads, "batch": args.batch, "clip_seconds": 10.24,
              "ours_clips_per_s": ours_rate, "ours_clips": ours_clips,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    rows = [("ours (batched torch)", ours_rate, 1000 / ours_rate)]
    if not args.skip_baseline:
        base_rate, base_clips = baseline(Fbank(fb_cfg), args.seconds)
        result.update(baseline_clips_per_s=base_rate, baseline_clips=base_clips, speedup=ours_rate / base_rate)
        rows.append(("baseline (per-clip NumPy)", base_rate, 1000 / base_rate))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'pipeline':28s} {'clips/s':>10s} {'ms/clip':>10s}")
    for name, rate, ms in rows:
        print(f"{name:28s} {rate:10.1f} {ms:10.2f}")
    if "speedup" in result:
        print(f"speedup: {result['speedup']:.2f}")


if __name__ == "__main__":
    main()
