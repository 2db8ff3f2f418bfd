"""The linear probe: separable vs shuffled data, model selection on the training part only, end to end."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiopg.core.config import to_dict
from audiopg.core.errors import AudioFileError, AudioPGError, ConfigError
from audiopg.eval.datasets import Dataset, GroupCV, Item, Split, load_dataset
from audiopg.eval.features import FeatureCache, HandcraftedFeatures
from audiopg.eval.probe import (
    C_GRID,
    _inner_cv,
    fit_probe,
    parse_baselines,
    probe_features,
    run_probe,
)


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A 2-block, 32-wide encoder with 0.32 s windows, saved like a trained one."""
    from audiopg.audio.fbank import FbankConfig
    from audiopg.model import ModelConfig, ViTEncoder
    from audiopg.model.checkpoint import save_encoder

    cfg = ModelConfig(num_frames=32, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2)
    torch.manual_seed(seed)
    enc = ViTEncoder(cfg)
    save_encoder(path / "encoder.safetensors", enc.state_dict(),
                 {"model": to_dict(cfg), "fbank": to_dict(FbankConfig()), "fbank_stats": {"mean": -6.0, "std": 4.0},
                  "world": {"peak_normalize": True}, "step": 0})
    return path


def tone_folder(root: Path, n: int = 6, seconds: float = 0.25, classes=(("low", 250.0), ("high", 2500.0))) -> Path:
    rng = np.random.default_rng(0)
    for c, f in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            t = np.arange(int(16000 * seconds)) / 16000
            x = 0.3 * np.sin(2 * np.pi * f * (1 + 0.02 * i) * t) + 0.02 * rng.standard_normal(t.size)
            sf.write(root / c / f"{i}.wav", x.astype(np.float32), 16000)
    return root


def synthetic_dataset(n_per_class: int = 40, n_classes: int = 4, n_groups: int = 10, task_type="single_label"):
    items = [Item(Path(f"/x/{i}.wav"), i % n_classes, group=f"g{i % n_groups}") for i in range(n_per_class * n_classes)]
    protocol = GroupCV(5, 0, stratified=True, grouped=True)
    return Dataset("synthetic", Path("/x"), task_type, [f"c{k}" for k in range(n_classes)], items, protocol)


# ----------------------------------------------------------------------------- the probe itself
def test_separable_features_reach_100_percent():
    ds = synthetic_dataset()
    y = ds.targets()
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 16)) * 6
    x = centers[y] + rng.standard_normal((len(y), 16))
    res = probe_features(ds, x, name="sep", description="")
    assert len(res.folds) == 5
    assert res.mean >= 0.99
    assert all(f.param in C_GRID for f in res.folds)


def test_splits_fitted_in_parallel_give_the_same_result_in_order():
    ds = synthetic_dataset(n_per_class=30)
    y = ds.targets()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 16))[y] * 2 + rng.standard_normal((len(y), 16))
    logs: dict[int, list[str]] = {1: [], 3: []}
    res = {j: probe_features(ds, x, name="p", description="", jobs=j, log=logs[j].append) for j in (1, 3)}
    assert [(f.split, f.score, f.param) for f in res[1].folds] == [(f.split, f.score, f.param) for f in res[3].folds]
    assert [f.split for f in res[3].folds] == [sp.name for sp in ds.splits()]
    assert [line.split(":")[0] for line in logs[3]] == [f"p {sp.name}" for sp in ds.splits()]


def test_shuffled_labels_give_chance():
    ds = synthetic_dataset(n_per_class=60)
    y = ds.targets()
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((4, 16)) * 6
    x = centers[y] + rng.standard_normal((len(y), 16))
    perm = rng.permutation(len(y))
    shuffled = Dataset(ds.name, ds.root, ds.task_type, ds.classes,
                       [Item(it.path, int(y[perm[i]]), it.group) for i, it in enumerate(ds.items)], ds.protocol)
    res = probe_features(shuffled, x, name="shuf", description="")
    assert abs(res.mean - 0.25) < 0.12  # chance is 1/4


def test_model_selection_never_sees_the_test_part():
    """Test rows carrying garbage must not change the chosen C: selection uses the training part only."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 30)
    x = rng.standard_normal((90, 8)) + 2.0 * np.eye(3, 8)[y]
    split = Split("s", np.setdiff1d(np.arange(90), np.arange(0, 90, 5)), np.arange(0, 90, 5))
    a = fit_probe(x, y, split, "single_label", seed=0)
    x2 = x.copy()
    x2[split.test] = rng.standard_normal((len(split.test), 8)) * 100
    b = fit_probe(x2, y, split, "single_label", seed=0)
    assert a.param == b.param and a.extra["selection_scores"] == b.extra["selection_scores"]


def test_validation_split_selects_c():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(2), 50)
    x = rng.standard_normal((100, 5)) + 1.5 * np.eye(2, 5)[y]
    idx = rng.permutation(100)
    split = Split("s", idx[:60], idx[80:], idx[60:80])
    fr = fit_probe(x, y, split, "single_label")
    assert fr.n_val == 20 and len(fr.extra["selection_scores"]) == len(C_GRID)
    assert fr.score > 0.8


def test_inner_cv_is_grouped_like_the_outer_split():
    y = np.repeat(np.arange(2), 20)
    groups = np.array([f"spk{i % 5}" for i in range(40)])
    cv, k = _inner_cv("single_label", y, groups, 0)
    assert k == 5
    for tr, va in cv.split(np.zeros((40, 1)), y, groups):
        assert not set(groups[tr]) & set(groups[va])


def test_multilabel_and_regression_probes():
    rng = np.random.default_rng(4)
    n = 120
    x = rng.standard_normal((n, 6))
    y_multi = np.stack([x[:, 0] > 0, x[:, 1] > 0.3, x[:, 0] + x[:, 2] > 0], axis=1).astype(np.uint8)
    split = Split("s", np.arange(80), np.arange(80, 120))
    fr = fit_probe(x, y_multi, split, "multi_label")
    assert fr.score > 0.9 and fr.extra["classes_evaluated"] == 3
    y_reg = 2 * x[:, 0] - x[:, 3] + 0.05 * rng.standard_normal(n)
    fr = fit_probe(x, y_reg, split, "regression")
    assert fr.score > 0.95 and fr.extra["median_abs_error"] < 0.2


def test_parse_baselines():
    assert parse_baselines("random,handcrafted") == ["random", "handcrafted"]
    assert parse_baselines("none") == [] and parse_baselines("") == []
    with pytest.raises(ConfigError, match="mfcc"):
        parse_baselines("mfcc")


# ----------------------------------------------------------------------------- end to end
def test_run_probe_handcrafted_on_tones_writes_reports(tmp_path):
    data = tone_folder(tmp_path / "data")
    ds = load_dataset("folder", data)
    res = run_probe(ds, tmp_path / "out", pretrained=False, baselines=["handcrafted"], cache_dir=False, progress=False)
    assert res["models"]["handcrafted"]["mean"] == 1.0
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    assert out["dataset"]["protocol"]["official"] is False
    assert len(out["models"]["handcrafted"]["folds"]) == 5
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| handcrafted |" in md and "mean ± std" in md and "100.0 ± 0.0" in md
    assert (tmp_path / "out" / "confusion_handcrafted.png").stat().st_size > 1000


def test_run_probe_with_encoder_baselines_cache_and_bad_files(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "run")
    data = tone_folder(tmp_path / "data", n=5)
    (data / "high" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    ds = load_dataset("folder", data)
    with pytest.raises(AudioFileError, match="broken.wav"):
        run_probe(ds, tmp_path / "out", checkpoint=ckpt, cache_dir=tmp_path / "cache", progress=False, device="cpu")
    res = run_probe(ds, tmp_path / "out", checkpoint=ckpt, cache_dir=tmp_path / "cache", skip_bad=True,
                    progress=False, device="cpu", batch_size=4)
    assert set(res["models"]) == {"pretrained", "random", "handcrafted"}
    assert [Path(s["path"]).name for s in res["dataset"]["skipped"]] == ["broken.wav"]
    assert res["dataset"]["num_items"] == 10
    assert "broken.wav" in (tmp_path / "out" / "results.md").read_text()
    assert len(res["options"]["checkpoint_sha256"]) == 64
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    # a second run reads every feature from the cache: the encoders are never called
    from audiopg.eval import probe as probe_mod

    def boom(self, clips):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(probe_mod.EncoderFeatures, "__call__", boom)
    monkeypatch.setattr(probe_mod.HandcraftedFeatures, "__call__", boom)
    res2 = run_probe(ds, tmp_path / "out2", checkpoint=ckpt, cache_dir=tmp_path / "cache", skip_bad=True,
                     progress=False, device="cpu")
    for name in res["models"]:
        assert res2["models"][name]["mean"] == pytest.approx(res["models"][name]["mean"])
    # without --skip-bad the cached knowledge of the bad file still stops the run
    with pytest.raises(AudioFileError, match="broken.wav"):
        run_probe(ds, tmp_path / "out3", checkpoint=ckpt, cache_dir=tmp_path / "cache", progress=False)


def test_cache_key_changes_with_options_and_files():
    files = [{"path": "a.wav", "size": 10, "mtime_ns": 1}]
    hc = HandcraftedFeatures()
    k1 = FeatureCache.key(hc, files, None)
    assert k1 == FeatureCache.key(hc, list(files), None)
    assert k1 != FeatureCache.key(hc, [{**files[0], "size": 11}], None)
    assert k1 != FeatureCache.key(hc, files, 2.0)


def test_cache_key_and_width_follow_the_pooling(tmp_path):
    from audiopg.eval.features import EncoderFeatures
    from audiopg.model.encoder import Encoder

    enc = Encoder.from_pretrained(tiny_checkpoint(tmp_path), device="cpu")
    files = [{"path": "a.wav", "size": 10, "mtime_ns": 1}]
    choices = [(-1, "mean"), (-1, "cls"), (-1, "meanstd"), (0, "mean"), (0, "meanstd"), ("concat", "mean"),
               ("concat", "meanstd")]
    feats = [EncoderFeatures("pretrained", enc, layer=layer, pool=pool) for layer, pool in choices]
    keys = {FeatureCache.key(f, files, None) for f in feats}
    assert len(keys) == len(choices)
    default = EncoderFeatures("pretrained", enc)  # None: the checkpoint's default (here the library's)
    assert (default.layer, default.pool) == (enc.default_layer, enc.default_pool)
    assert FeatureCache.key(default, files, None) == FeatureCache.key(
        EncoderFeatures("pretrained", enc, layer=enc.default_layer, pool=enc.default_pool), files, None)
    assert "64-d" in feats[2].description and "128-d" in feats[6].description
    clips = [np.random.default_rng(0).standard_normal(4000).astype(np.float32)]
    assert feats[6](clips).shape == (1, 128)
    with pytest.raises(ValueError, match="not 'all'"):
        EncoderFeatures("pretrained", enc, layer="all")


def test_run_probe_records_the_pooling_it_used(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    ds = load_dataset("folder", tone_folder(tmp_path / "data", n=5))
    res = run_probe(ds, tmp_path / "out", checkpoint=ckpt, baselines=[], cache_dir=tmp_path / "cache",
                    progress=False, device="cpu", layer="concat", pool="meanstd")
    assert (res["options"]["layer"], res["options"]["pool"]) == ("concat", "meanstd")
    (npy,) = (tmp_path / "cache").glob("*.npy")
    assert np.load(npy).shape == (10, 2 * 2 * 32)
    res = run_probe(ds, tmp_path / "out2", checkpoint=ckpt, baselines=[], cache_dir=tmp_path / "cache",
                    progress=False, device="cpu")
    assert (res["options"]["layer"], res["options"]["pool"]) == (-1, "mean")  # the checkpoint's default
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_probe_cli_pooling_options(tmp_path, capsys):
    from audiopg.cli import eval as eval_cli

    parser = argparse.ArgumentParser(prog="audiopg")
    eval_cli.register(parser.add_subparsers(dest="command"))
    base = ["probe", "--task", "folder", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")]
    args = parser.parse_args(base)
    assert args.layer is None and args.pool is None
    args = parser.parse_args(base + ["--layer", "concat", "--pool", "meanstd"])
    assert args.layer == "concat" and args.pool == "meanstd"
    assert parser.parse_args(base + ["--layer", "-1"]).layer == -1
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--layer", "all"])
    assert "--layer must be an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--pool", "max"])
    assert "meanstd" in capsys.readouterr().err


def test_probe_cli(tmp_path, capsys):
    from audiopg.cli import eval as eval_cli

    data = tone_folder(tmp_path / "data", n=5)
    parser = argparse.ArgumentParser(prog="audiopg")
    eval_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["probe", "--task", "folder", "--data-root", str(data), "--out", str(tmp_path / "o"),
                              "--baselines", "handcrafted", "--no-pretrained", "--cache-dir", "none", "--quiet"])
    assert args.func(args) == 0
    assert "handcrafted" in capsys.readouterr().out
    assert (tmp_path / "o" / "results.md").exists()
    args = parser.parse_args(["probe", "--task", "folder", "--data-root", str(data), "--out", str(tmp_path / "o"),
                              "--quiet", "--cache-dir", "none", "--overwrite"])
    with pytest.raises(AudioPGError, match="--checkpoint"):
        args.func(args)


def test_cli_registers_commands():
    from audiopg.cli.main import COMMAND_MODULES

    assert "audiopg.cli.eval" in COMMAND_MODULES
