"""DistributedDataParallel pre-training: 2 CPU processes on gloo through torch.distributed.run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from audiopg.audio.fbank import FbankStats
from audiopg.model.checkpoint import load_encoder_file
from audiopg.train.config import PretrainConfig
from audiopg.train.data import SynthSpectrograms
from audiopg.train.run_dir import derive_seed, load_state

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.num_frames=32", "--set", "model.num_mel_bins=32", "--set", "model.patch_size=8",
        "--set", "model.embed_dim=32", "--set", "model.depth=1", "--set", "model.num_heads=2",
        "--set", "model.decoder_embed_dim=32", "--set", "model.decoder_depth=1", "--set", "model.decoder_num_heads=2",
        "--set", "world.events.min_seconds=0.1", "--set", "stats_clips=8", "--batch-size", "3", "--no-progress"]


def test_two_gloo_processes_train_with_their_own_clips(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "audiopg", "pretrain", *TINY, "--device", "cpu", "--steps", "4", "--seed", "3", "--out", str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    saved = json.loads((run / "config.json").read_text())
    plan = saved["plan"]
    assert plan["world_size"] == 2 and plan["global_batch"] == 6
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]  # rank 0 alone writes
    state = load_state(run / "state.pt")
    ranks = state["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["world_seed"] for r in ranks] == [derive_seed(3, 0, "world"), derive_seed(3, 1, "world")]
    assert ranks[0]["mask_seed"] != ranks[1]["mask_seed"]
    # the ranks drew different clips (their last batches differ) and kept their own generator states: each
    # rank's saved generator is its own seed's after its 4 batches
    config = PretrainConfig.from_dict(saved["train"])
    model_cfg = config.model_config()
    world_cfg = config.world_config(model_cfg)
    stats = FbankStats.from_dict(saved["fbank_stats"])
    data = SynthSpectrograms(world_cfg, config.fbank_config(model_cfg, world_cfg), stats)
    last_batches = []
    for r in ranks:
        gen = data.generator(r["world_seed"])
        for _ in range(4):
            x = data.batch(3, gen)
        assert torch.equal(gen.get_state(), r["world_rng"])
        last_batches.append(x)
    assert not torch.equal(last_batches[0], last_batches[1])
    assert not torch.equal(ranks[0]["world_rng"], ranks[1]["world_rng"])
    _, meta = load_encoder_file(run / "encoder.safetensors")
    assert meta["step"] == 4 and meta["clips_seen"] == 24
