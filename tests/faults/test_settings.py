"""Fault cases: bad numeric options and settings of every command end in one line naming the option or key."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_cli

from audiopg.core.device import resolve_device
from audiopg.core.errors import ConfigError
from audiopg.eval.datasets.base import Dataset, GroupCV, Item
from audiopg.eval.probe import run_probe
from audiopg.model import ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_data import make_fsdd  # noqa: E402

torch.set_num_threads(1)

TINY_MODEL = dict(num_frames=32, num_mel_bins=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                  decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
TINY_ARGS = [a for k, v in TINY_MODEL.items() for a in ("--set", f"model.{k}={v}")] + [
    "--set", "world.events.min_seconds=0.1", "--set", "stats_clips=4", "--batch-size", "2", "--no-progress",
]


# ----------------------------------------------------------------------------- numeric options
# (command line with {} where the value goes, the option); every one is refused by argparse before any work
OPTIONS = [
    (["probe", "--task", "fsdd", "--data-root", "D", "--out", "O", "--max-seconds", "{}"], "--max-seconds"),
    (["probe", "--task", "fsdd", "--data-root", "D", "--out", "O", "--batch-size", "{}"], "--batch-size"),
    (["probe", "--task", "fsdd", "--data-root", "D", "--out", "O", "--seed", "{}"], "--seed"),
    (["finetune", "--task", "fsdd", "--data-root", "D", "--out", "O", "--checkpoint", "C", "--recipe", "fsdd-tiny",
      "--seed", "{}"], "--seed"),
    (["download", "fsdd", "--root", "O", "--timeout", "{}"], "--timeout"),
    (["embed", "I", "--checkpoint", "C", "--out", "O", "--batch-size", "{}"], "--batch-size"),
    (["synth", "--out", "O", "--n", "{}"], ("--n", "n: must be >= 1")),  # an int, checked by the command
    (["synth", "--out", "O", "--seconds", "{}"], "--seconds"),
    (["synth", "--out", "O", "--seed", "{}"], "--seed"),
    (["stats", "--clips", "{}"], "--clips"),
    (["stats", "--mel-bins", "{}"], "--mel-bins"),
    (["stats", "--batch-size", "{}"], "--batch-size"),
    (["pretrain", "--out", "O", "--steps", "{}"], "--steps"),
    (["pretrain", "--out", "O", "--minutes", "{}"], "--minutes"),
    (["pretrain", "--out", "O", "--steps", "1", "--batch-size", "{}"], "--batch-size"),
    (["pretrain", "--out", "O", "--steps", "1", "--lr", "{}"], "--lr"),
    (["pretrain", "--out", "O", "--steps", "1", "--seed", "{}"], "--seed"),
    (["ablate", "--out", "O", "--steps", "{}"], "--steps"),
    (["ablate", "--out", "O", "--minutes", "{}"], "--minutes"),
    (["ablate", "--out", "O", "--steps", "1", "--seeds", "{}"], "--seeds"),
    (["ablate", "--out", "O", "--steps", "1", "--probe-batch-size", "{}"], "--probe-batch-size"),
    (["probe", "--task", "fsdd", "--data-root", "D", "--out", "O", "--threads", "{}"], "--threads"),
    (["analyze", "--checkpoint", "C", "--out", "O", "--seed", "{}"], "--seed"),
]
INTEGERS = ("--seed", "--threads", "--steps", "--n", "--seeds", "--batch-size", "--probe-batch-size", "--clips",
            "--mel-bins")
# every option with 0, -1, nan, inf (1.5 for integers) and text; a seed may be 0
CASES = [(args, option, "1.5" if value == "inf" and args[-2] in INTEGERS else value)
         for args, option in OPTIONS for value in ("0", "-1", "nan", "inf", "x")
         if not (args[-2] == "--seed" and value == "0")]


@pytest.mark.parametrize("args,option,value", CASES, ids=[f"{a[0]}{a[-2]}={v}" for a, _, v in CASES])
def test_numeric_options_are_checked(faults, tmp_path, args, option, value):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    full = [value if a == "{}" else str(tmp_path / "out") if a == "O" else str(tmp_path / a) if a in ("D", "C", "I")
            else a for a in args]
    faults.cli(full, option, guard=[tmp_path / "out"])


def test_the_device_is_checked(faults, tmp_path):
    faults.cli(["synth", "--out", tmp_path / "w", "--n", "1", "--device", "meta"], "meta")
    faults.cli(["synth", "--out", tmp_path / "w", "--n", "1", "--device", "cuda:99"], "cuda:99")
    faults.api(lambda: resolve_device("meta"), "meta")
    assert resolve_device("cpu") == torch.device("cpu")


# ----------------------------------------------------------------------------- pre-training settings
@pytest.mark.parametrize("ratio", ["0", "0.001", "nan", "1", "-0.5"])
def test_a_mask_ratio_that_masks_no_patch_is_refused(faults, tmp_path, ratio):
    faults.cli(["pretrain", "--preset", "tiny", "--steps", "1", "--out", tmp_path / "r",
                "--set", f"model.mask_ratio={ratio}"], "model.mask_ratio")
    assert not (tmp_path / "r").exists()


def test_mask_ratio_is_checked_against_the_patch_count():
    cfg = dict(num_frames=128, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
               decoder_num_heads=2)  # 8 x 8 = 64 patches: a ratio masks a patch from 1/128 on
    for ratio in (0.0, 0.005, 0.0078):
        with pytest.raises(ConfigError, match=r"mask_ratio: .* masks no patch of the 64"):
            ModelConfig(**cfg, mask_ratio=ratio)
    assert ModelConfig(**cfg, mask_ratio=0.01).num_patches == 64
    assert ModelConfig(**cfg, mask_ratio=0.999).mask_ratio == 0.999  # keeps one patch


@pytest.mark.parametrize("key,value", [
    ("world.seconds", "nan"), ("world.seconds", "-1"), ("lr", "inf"), ("lr", "nan"), ("batch_size", "0"),
    ("steps", "-3"), ("minutes", "nan"), ("warmup_steps", "-1"), ("stats_clips", "0"), ("world.sample_rate", "0"),
    ("model.depth", "0"), ("model.drop_path", "nan"), ("model.num_frames", "20"),
])
def test_bad_pretraining_settings_name_the_key(faults, tmp_path, key, value):
    length = [] if key in ("steps", "minutes") else ["--steps", "1"]
    faults.cli(["pretrain", "--preset", "tiny", *length, "--out", tmp_path / "r", "--set", f"{key}={value}"], key)
    assert not (tmp_path / "r").exists()


def test_clips_shorter_than_the_window_are_announced(faults, tmp_path):
    # the tiny test model's window is 32 frames = 0.32 s; 0.16 s clips leave half of every input padding
    res = faults.cli(["pretrain", "--preset", "tiny", "--steps", "1", "--out", tmp_path / "r", *TINY_ARGS,
                      "--set", "world.seconds=0.16", "--set", "world.events.min_seconds=0.05"],
                     "world.seconds=0.16", expect="warned")
    assert "50% of every input is padding" in res.stderr
    default = run_cli(["pretrain", "--preset", "tiny", "--steps", "1", "--out", tmp_path / "r2", *TINY_ARGS])
    assert default.rc == 0 and "padding" not in default.stderr  # the default clip fills the window: no word


# ----------------------------------------------------------------------------- probe settings
@pytest.fixture(scope="module")
def fsdd(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fsdd(root, digits=2, takes=3)
    return root


@pytest.mark.parametrize("kwargs,key", [
    ({"max_seconds": 0}, "max_seconds"), ({"max_seconds": -1.0}, "max_seconds"),
    ({"max_seconds": float("nan")}, "max_seconds"), ({"max_seconds": 0.001}, "max_seconds"),
    ({"batch_size": 0}, "batch_size"),
])
def test_run_probe_checks_its_numbers(faults, tmp_path, fsdd, kwargs, key):
    items = [Item(p, i % 2) for i, p in enumerate(sorted((fsdd / "fsdd" / "recordings").glob("*.wav")))]
    ds = Dataset("toy", fsdd, "single_label", ["a", "b"], items, GroupCV(2, 0, stratified=True, grouped=False,
                                                                        reason="test"), [], [])
    faults.api(lambda: run_probe(ds, tmp_path / "o", baselines=["handcrafted"], pretrained=False, cache_dir=False,
                                 progress=False, **kwargs), key)
    assert not (tmp_path / "o").exists()


def test_a_clip_cut_below_one_analysis_window_is_refused(faults, tmp_path, fsdd):
    res = faults.cli(["probe", "--task", "fsdd", "--data-root", fsdd, "--out", tmp_path / "o", "--max-seconds",
                      "0.001", "--baselines", "handcrafted", "--no-pretrained", "--quiet"], "max_seconds")
    assert "0.025" in res.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("target", ["nan", "inf", "-inf"])
def test_manifest_with_a_non_finite_target_names_the_row(faults, tmp_path, target):
    sr = 16000
    rows = ["path,label"]
    for i in range(8):
        sf.write(tmp_path / f"{i}.wav", np.zeros(sr // 10, np.float32), sr)
        rows.append(f"{i}.wav,{target if i == 5 else i * 0.5}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    res = faults.cli(["probe", "--task", "manifest", "--data-root", tmp_path / "m.csv", "--out", tmp_path / "o",
                      "--target-type", "continuous", "--baselines", "handcrafted", "--no-pretrained",
                      "--cache-dir", "none", "--quiet"], "row 7", guard=[tmp_path / "m.csv"])
    assert target in res.stderr and not (tmp_path / "o").exists()


def test_manifest_with_a_short_row_names_it(faults, tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.wav,1\nb.wav\n")
    faults.cli(["probe", "--task", "manifest", "--data-root", tmp_path / "m.csv", "--out", tmp_path / "o",
                "--baselines", "handcrafted", "--no-pretrained", "--quiet"], "row 3")


def test_finetune_recipe_settings_name_the_key(faults, tmp_path, fsdd):
    for key, value in (("epochs", "0"), ("lr", "nan"), ("batch_size", "-1")):
        faults.cli(["finetune", "--task", "fsdd", "--data-root", fsdd, "--checkpoint", tmp_path / "none",
                    "--recipe", "fsdd-tiny", "--out", tmp_path / "o", "--set", f"{key}={value}", "--quiet"], key)
    assert not (tmp_path / "o").exists()
