"""Tests for audiopg.train: config, on-device data and stats, the loop, exact resume and faults.

Every run uses a very small model (1 block, 32-wide, 32 frames x 32 mel bins,
8x8 patches) on 0.32 s clips, so a step takes milliseconds.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audiopg.audio.fbank import Fbank, FbankConfig, FbankStats
from audiopg.cli import pretrain as train_cli
from audiopg.core.errors import CheckpointError, ConfigError
from audiopg.core.schedule import lr_at
from audiopg.model import MaskedAutoencoder, ViTEncoder
from audiopg.model.checkpoint import load_encoder_file, read_metadata
from audiopg.model.encoder import Encoder
from audiopg.synth import World
from audiopg.train.config import PretrainConfig, build_pretrain_config, warmup_steps_for
from audiopg.train.data import SynthSpectrograms, compute_fbank_stats
from audiopg.train.pretrain import NonFiniteLoss, pretrain
from audiopg.train.run_dir import (
    check_resume_config,
    derive_seed,
    load_run_config,
    load_state,
)

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(preset="tiny", num_frames=32, num_mel_bins=32, patch_size=8, embed_dim=32, depth=1,
                  num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
TINY_WORLD = dict(preset="paper", events={"min_seconds": 0.1})
# the same settings for the command line
TINY_ARGS = [a for k, v in TINY_MODEL.items() for a in ("--set", f"model.{k}={v}")] + [
    "--set", "world.events.min_seconds=0.1", "--set", "stats_clips=8", "--batch-size", "4", "--no-progress",
]


def tiny(**changes) -> PretrainConfig:
    data = dict(model=TINY_MODEL, world=TINY_WORLD, batch_size=4, steps=8, stats_clips=8, progress=False, seed=0)
    data.update(changes)
    return PretrainConfig.from_dict(data).resolved()


def losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in lines] == list(range(1, len(lines) + 1)), "metrics steps must be 1..n, once each"
    return [r["loss"] for r in lines]


def quiet(msg: str) -> None:
    pass


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted 8-step run that the fault tests must reproduce."""
    run = tmp_path_factory.mktemp("ref") / "run"
    result = pretrain(tiny(), run, log=quiet)
    assert result.status == "finished" and result.step == 8
    return run


# ----------------------------------------------------------------------------- config
def test_config_precedence_file_set_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 8\nlr: 1.0e-3\nminutes: 3\nmodel: {depth: 2}\nworld: {seconds: 1.5}\n")
    cfg = build_pretrain_config(f, ["lr=2e-3", "model.embed_dim=96", "seed=7"], {"steps": 5, "batch_size": None})
    assert cfg.lr == 2e-3  # "2e-3" is a number here, though YAML 1.1 reads it as a string
    cfg = build_pretrain_config(f, ["lr=2e-3", "model.embed_dim=96", "seed=7"], {"lr": 3e-3, "steps": 5, "batch_size": None})
    assert cfg.lr == 3e-3 and cfg.batch_size == 8 and cfg.seed == 7
    assert cfg.steps == 5 and cfg.minutes is None  # the --steps flag replaces the file's minutes
    assert cfg.model == {"preset": "tiny", "depth": 2, "embed_dim": 96}
    m = cfg.model_config()
    assert (m.depth, m.embed_dim, m.num_frames) == (2, 96, 256)
    assert cfg.world_config(m).seconds == 1.5  # explicit world.seconds wins over num_frames * 10 ms


def test_preset_defaults_and_clip_length_follow_the_model():
    cfg = build_pretrain_config(flags={"steps": 10})
    assert (cfg.preset, cfg.lr, cfg.batch_size) == ("tiny", 1.2e-3, 64)
    assert cfg.weight_decay == 0.05 and cfg.betas == (0.9, 0.95) and cfg.world["preset"] == "paper"
    m = cfg.model_config()
    w = cfg.world_config(m)
    assert w.seconds == pytest.approx(2.56)
    fb = cfg.fbank_config(m, w)
    assert (fb.target_frames, fb.num_mel_bins, fb.sample_rate) == (256, 128, 16000)
    base = build_pretrain_config(flags={"steps": 10, "preset": "base"})
    assert base.model_config().num_frames == 1024 and base.world_config().seconds == pytest.approx(10.24)
    assert base.lr == 1.5e-4


@pytest.mark.parametrize("overrides, key", [
    (["bogus=1"], "bogus"),
    (["model.depht=2"], "model.depht"),
    (["model.preset=huge"], "model.preset"),
    (["world.events.cont=3"], "world.events.cont"),
    (["lr=-1"], "lr"),
    (["steps=3", "minutes=2"], "steps"),  # both lengths given
    (["betas=[0.9, 1.5]"], "betas[1]"),
    (["device=gpu0"], "device"),
])
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        build_pretrain_config(None, overrides, {} if key == "steps" else {"steps": 3})
    assert err.value.key == key, str(err.value)


def test_run_length_is_required():
    with pytest.raises(ConfigError) as err:
        build_pretrain_config()
    assert err.value.key == "steps"


def test_lr_schedule_warmup_then_cosine():
    peak, low, warm, total = 1e-3, 1e-5, 10, 110
    lrs = [lr_at(s, peak, low, warm, total) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 10) and lrs[4] == pytest.approx(peak / 2) and lrs[9] == pytest.approx(peak)
    assert lrs[10] == pytest.approx(peak) and lrs[-1] == pytest.approx(low)
    assert lrs[60] == pytest.approx(low + (peak - low) * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_steps_for(tiny(warmup_fraction=0.1), 200) == 20
    assert warmup_steps_for(tiny(warmup_steps=7), 200) == 7


# ----------------------------------------------------------------------------- data
def small_world_and_fbank():
    cfg = tiny()
    m = cfg.model_config()
    w = cfg.world_config(m)
    return w, cfg.fbank_config(m, w)


def test_batches_are_normalized_log_mel_of_the_world():
    w, fb = small_world_and_fbank()
    stats = FbankStats(mean=-3.0, std=2.5)
    data = SynthSpectrograms(w, fb, stats, "cpu")
    x = data.batch(5, torch.Generator().manual_seed(3))
    assert x.shape == (5, 32, 32) and x.dtype == torch.float32
    audio = World(w).sample(5, torch.Generator().manual_seed(3)).audio
    expected = (Fbank(fb)(audio) + 3.0) / 5.0
    torch.testing.assert_close(x, expected)


def test_fbank_stats_are_float64_moments_of_the_world():
    w, fb = small_world_and_fbank()
    stats = compute_fbank_stats(w, fb, n_clips=10, seed=5, batch_size=4)
    world, g = World(w), torch.Generator().manual_seed(5)
    audio = torch.cat([world.sample(n, g).audio for n in (4, 4, 2)])  # the same draws, batch by batch
    values = Fbank(FbankConfig(sample_rate=fb.sample_rate, num_mel_bins=fb.num_mel_bins))(audio).double()
    assert values.shape[1] == 30  # stats use the computed frames, not the padding to 32
    assert stats.mean == pytest.approx(values.mean().item(), rel=1e-9)
    assert stats.std == pytest.approx(values.std(unbiased=False).item(), rel=1e-9)
    assert compute_fbank_stats(w, fb, n_clips=10, seed=5, batch_size=4) == stats  # deterministic
    other = compute_fbank_stats(w, fb, n_clips=10, seed=6, batch_size=4)
    assert other.mean != stats.mean


# ----------------------------------------------------------------------------- a whole run
def test_run_writes_every_output(reference_run):
    run = reference_run
    cfg_json = json.loads((run / "config.json").read_text())
    assert cfg_json["plan"]["total_steps"] == 8 and cfg_json["plan"]["world_size"] == 1
    assert cfg_json["train"]["lr"] == 1.2e-3 and cfg_json["train"]["model"]["depth"] == 1
    assert cfg_json["world"]["seconds"] == pytest.approx(0.32)
    # the stats were measured on the world (8 clips, the run's stats seed), not taken from anywhere else
    w, fb = small_world_and_fbank()
    stats = compute_fbank_stats(w, fb, 8, seed=derive_seed(0, 0, "stats"), batch_size=64)
    assert cfg_json["fbank_stats"] == pytest.approx(stats.to_dict(), rel=1e-9)

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and {"step", "loss", "lr", "clips_per_s", "elapsed"} <= set(lines[0])
    assert lines[-1]["lr"] == pytest.approx(1e-6) and lines[0]["lr"] == pytest.approx(1.2e-3)
    assert all(math.isfinite(r["loss"]) and r["clips_per_s"] > 0 for r in lines)

    weights, meta = load_encoder_file(run / "encoder.safetensors")
    for key in ("model", "fbank", "fbank_stats", "world", "step", "clips_seen", "git_commit", "train",
                "wall_time_s", "device"):
        assert key in meta, key
    assert meta["step"] == 8 and meta["clips_seen"] == 32
    assert meta["fbank_stats"] == cfg_json["fbank_stats"] and meta["world"] == cfg_json["world"]
    assert meta["fbank"]["target_frames"] == 32 and meta["model"]["embed_dim"] == 32
    assert meta["git_commit"] is None or len(meta["git_commit"]) >= 7
    model_cfg = tiny().model_config()
    assert set(weights) == set(ViTEncoder(model_cfg).state_dict())
    state = load_state(run / "state.pt")
    assert state["step"] == 8
    for k, v in weights.items():
        torch.testing.assert_close(v, state["model"][f"encoder.{k}"], rtol=0, atol=0)
    assert (run / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_reduces_the_loss(tmp_path):
    result = pretrain(tiny(steps=60, lr=2e-3), tmp_path / "run", log=quiet)
    ls = losses(tmp_path / "run")
    assert sum(ls[-10:]) / 10 < 0.9 * sum(ls[:10]) / 10, (ls[:10], ls[-10:])
    assert result.final_loss == pytest.approx(sum(ls[-20:]) / 20, rel=1e-5)


def test_prefetch_thread_draws_the_same_batches(tmp_path, reference_run):
    pretrain(tiny(prefetch=False), tmp_path / "run", log=quiet)
    assert losses(tmp_path / "run") == pytest.approx(losses(reference_run), abs=1e-5)


def test_minutes_fit_the_schedule_and_calibration_leaves_no_trace(tmp_path):
    run = tmp_path / "timed"
    result = pretrain(tiny(steps=None, minutes=0.05, fit_steps=3, warmup_fraction=0.1), run, log=quiet)
    plan = json.loads((run / "config.json").read_text())["plan"]
    budget = 0.05 * 60
    left = budget - plan["planned_at_s"] - min(2.0 + 0.01 * budget, 0.1 * budget)
    assert plan["fitted_to_minutes"] == 0.05 and plan["measured_step_s"] > 0
    # fitted once after timing 3 steps, then again at the end of the warm-up from the warm-up's steps
    refit = plan["refitted_at_step"]
    assert refit == plan["warmup_steps"] == round(0.1 * plan["first_total_steps"]) >= 5
    assert plan["total_steps"] == max(refit + 1, refit + int(left / plan["measured_step_s"]))
    assert result.step == plan["total_steps"] == load_state(run / "state.pt")["plan"]["total_steps"]
    # the timed steps were undone: the same plan as a steps run gives the same losses
    pretrain(tiny(steps=plan["total_steps"], warmup_steps=plan["warmup_steps"]), tmp_path / "steps", log=quiet)
    assert losses(run) == pytest.approx(losses(tmp_path / "steps"), abs=1e-5)


# ----------------------------------------------------------------------------- faults
def test_stop_and_resume_is_exact(tmp_path, reference_run):
    run = tmp_path / "run"

    def stop_at_3(trainer, step, loss):
        if step == 3:
            trainer.request_stop()

    first = pretrain(tiny(), run, on_step=stop_at_3, log=quiet)
    assert first.status == "interrupted" and first.step == 3
    assert load_state(run / "state.pt")["step"] == 3 and not (run / "encoder.safetensors").exists()
    second = pretrain(tiny(), run, resume=True, log=quiet)
    assert second.status == "finished" and second.step == 8
    assert losses(run) == pytest.approx(losses(reference_run), abs=1e-5)
    a, b = load_state(run / "state.pt")["model"], load_state(reference_run / "state.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    again = pretrain(tiny(), run, resume=True, log=quiet)
    assert again.status == "already finished"


def test_nonfinite_loss_stops_and_keeps_the_last_good_state(tmp_path, reference_run, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    original = MaskedAutoencoder.forward_loss

    def nan_on_third(self, spec, pred, mask):
        calls["n"] += 1
        loss = original(self, spec, pred, mask)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(MaskedAutoencoder, "forward_loss", nan_on_third)
    with pytest.raises(NonFiniteLoss, match="at step 3 of 8"):
        pretrain(tiny(), run, log=quiet)
    assert load_state(run / "state.pt")["step"] == 2 and len(losses(run)) == 2
    # the saved state is exactly the state after step 2: resuming reproduces the reference
    monkeypatch.setattr(MaskedAutoencoder, "forward_loss", original)
    pretrain(tiny(), run, resume=True, log=quiet)
    assert losses(run) == pytest.approx(losses(reference_run), abs=1e-5)


def test_absurd_lr_diverges_with_a_clear_cli_error(tmp_path, capsys):
    code = train_cli.main(["pretrain", *TINY_ARGS, "--steps", "30", "--lr", "1e6", "--set", "grad_clip=0",
                           "--set", "min_lr=1e6", "--set", "warmup_steps=0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "at step" in err[0] and "stopped without applying" in err[0]
    assert load_state(tmp_path / "run" / "state.pt")["step"] >= 1


def run_cli_subprocess(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "audiopg", "pretrain", *args], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_metrics(run: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = run / "metrics.jsonl"
        if path.exists():
            count = path.read_text().count("\n")
            if count >= n:
                return count
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no metrics in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_save_the_state_before_exit(tmp_path, sig):
    run = tmp_path / "run"
    proc = run_cli_subprocess([*TINY_ARGS, "--steps", "100000", "--out", str(run)])
    wait_for_metrics(run, 2, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    state = load_state(run / "state.pt")
    assert state["step"] == len(losses(run)) >= 2
    assert "--resume" in out
    # it continues from there
    config = build_pretrain_config(None, [], {}, base=json.loads((run / "config.json").read_text())["train"])
    result = pretrain(config, run, resume=True, log=quiet,
                      on_step=lambda trainer, step, loss: trainer.request_stop())
    assert result.step == state["step"] + 1 and len(losses(run)) == state["step"] + 1


def test_sigkill_loses_only_unsaved_steps_and_resume_is_exact(tmp_path):
    run = tmp_path / "run"
    steps = 60
    proc = run_cli_subprocess([*TINY_ARGS, "--steps", str(steps), "--set", "save_every_minutes=0.0001",
                               "--out", str(run)])
    seen = wait_for_metrics(run, 5, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert seen < steps and not (run / "encoder.safetensors").exists()
    state = load_state(run / "state.pt")  # complete, whatever moment the kill hit
    assert 1 <= state["step"] <= len(losses(run))
    # resume (a new save interval is allowed) and compare with a run that never stopped
    config = build_pretrain_config(None, ["save_every_minutes=10"], {},
                                   base=json.loads((run / "config.json").read_text())["train"])
    pretrain(config, run, resume=True, log=quiet)
    assert not list(run.glob(".state.pt.*.tmp"))
    pretrain(tiny(steps=steps), tmp_path / "ref", log=quiet)
    assert losses(run) == pytest.approx(losses(tmp_path / "ref"), abs=1e-5)


# ----------------------------------------------------------------------------- command line
def test_cli_rejects_bad_settings_in_one_line(tmp_path, capsys, reference_run):
    cases = [
        ([*TINY_ARGS, "--steps", "5", "--set", "bogus=1", "--out", str(tmp_path / "a")], "bogus"),
        ([*TINY_ARGS, "--steps", "5", "--set", "model.depht=2", "--out", str(tmp_path / "a")], "model.depht"),
        ([*TINY_ARGS, "--steps", "5"], "out"),
        ([*TINY_ARGS, "--steps", "5", "--out", str(reference_run)], "already holds a run"),
        (["--resume", str(reference_run), "--lr", "0.1"], "lr: differs"),
        (["--resume", str(reference_run), "--steps", "9"], "steps: differs"),
        (["--resume", str(reference_run), "--set", "model.depth=3"], "model.depth: differs"),
        (["--resume", str(tmp_path)], "not a run folder"),
    ]
    for args, needle in cases:
        code = train_cli.main(["pretrain", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (args, err)
        assert err[0].startswith("audiopg pretrain: error:")
    assert not (tmp_path / "a").exists()


def test_resume_may_change_device_and_progress_only(tmp_path, reference_run):
    saved = json.loads((reference_run / "config.json").read_text())["train"]
    ok = build_pretrain_config(None, ["save_every_minutes=1"], {"device": "cpu", "progress": True}, base=saved)
    check_resume_config(load_run_config(reference_run)[0], ok)
    with pytest.raises(CheckpointError, match="seed: differs"):
        check_resume_config(load_run_config(reference_run)[0], build_pretrain_config(None, [], {"seed": 1}, base=saved))


def test_pretrain_is_registered_with_the_main_cli():
    from audiopg.cli import main as cli

    assert "audiopg.cli.pretrain" in cli.COMMAND_MODULES
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    train_cli.register(sub)
    args = parser.parse_args(["pretrain", "--preset", "tiny", "--minutes", "8", "--out", "runs/tiny"])
    assert args.func is train_cli.run and args.minutes == 8.0 and args.out == "runs/tiny"


def test_a_run_records_its_default_embedding(reference_run, tmp_path):
    from_file = read_metadata(reference_run / "encoder.safetensors")["embedding"]
    assert from_file == {"layer": "concat", "pool": "meanstd"}  # PretrainConfig.embedding_layer/_pool's defaults
    enc = Encoder.from_pretrained(reference_run)
    assert (enc.default_layer, enc.default_pool) == ("concat", "meanstd")
    assert enc.embed(torch.zeros(1, 4000), 16000).scene.shape == (1, 2 * enc.depth * enc.embedding_size)
    run = tmp_path / "mean"
    pretrain(tiny(steps=2, embedding_pool="mean", embedding_layer=-1), run, log=quiet)
    assert read_metadata(run / "encoder.safetensors")["embedding"] == {"layer": -1, "pool": "mean"}
    enc = Encoder.from_pretrained(run)
    assert enc.embed(torch.zeros(1, 4000), 16000).scene.shape == (1, enc.embedding_size)
    with pytest.raises(ConfigError, match="embedding_pool"):
        tiny(embedding_pool="max")
    for bad in ("all", 99, -2, "2", True):  # one vector per clip from a block the model has
        with pytest.raises(ConfigError, match="embedding_layer"):
            tiny(embedding_layer=bad)
