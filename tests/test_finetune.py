"""Fine-tuning: recipes, schedule, augmentations, layer-wise lr decay, and a few real steps on a tiny fixture."""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiopg.core.config import to_dict
from audiopg.core.errors import ConfigError
from audiopg.core.schedule import lr_at
from audiopg.eval.datasets import load_dataset
from audiopg.eval.datasets.base import Split
from audiopg.eval.finetune import (
    FinetuneModel,
    Recipe,
    list_recipes,
    load_recipe,
    patch_keep_ids,
    probe_head,
    run_finetune,
    spec_augment,
)


def tiny_checkpoint(path: Path) -> Path:
    from audiopg.audio.fbank import FbankConfig
    from audiopg.model import ModelConfig, ViTEncoder
    from audiopg.model.checkpoint import save_encoder

    cfg = ModelConfig(num_frames=32, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2)
    torch.manual_seed(0)
    save_encoder(path / "encoder.safetensors", ViTEncoder(cfg).state_dict(),
                 {"model": to_dict(cfg), "fbank": to_dict(FbankConfig()), "fbank_stats": {"mean": -6.0, "std": 4.0},
                  "world": {"peak_normalize": True}})
    return path


def tone_folder(root: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c, f in (("low", 300.0), ("high", 3000.0)):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            t = np.arange(int(16000 * 0.25)) / 16000
            x = 0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(t.size)
            sf.write(root / c / f"{i}.wav", x.astype(np.float32), 16000)
    return root


SMOKE = dict(epochs=30, batch_size=8, lr=3e-3, min_lr=1e-4, warmup_epochs=1, drop_path=0.0, label_smoothing=0.0,
             clip_frames=32, folds=1, amp=False)


# ----------------------------------------------------------------------------- recipes
def test_bundled_recipes_load_and_cover_the_benchmarks():
    names = list_recipes()
    for need in ("esc50-base", "us8k-base", "scv2-base", "fsd50k-base", "fsdd-tiny", "esc50-tiny"):
        assert need in names
    for n in names:
        r = load_recipe(n)
        assert r.name == n and r.source
    esc = load_recipe("esc50-base")
    assert esc.layer_decay == 0.75 and esc.drop_path == 0.1 and esc.clip_frames == 512
    assert esc.peak_lr() == pytest.approx(esc.blr * esc.batch_size / 256)
    assert load_recipe("fsd50k-base").loss == "bce"
    assert load_recipe("esc50-tiny", ["epochs=2", "folds=1"]).epochs == 2
    # the base recipes (AudioMAE's settings) keep MAE's cold head; the tiny ones start from a linear probe
    assert {n: load_recipe(n).head_init for n in names if n.endswith("-base")} == {
        n: "random" for n in names if n.endswith("-base")}
    assert load_recipe("fsdd-tiny").head_init == "probe" and load_recipe("esc50-tiny").head_init == "probe"
    assert load_recipe("esc50-tiny").epochs >= 20


def test_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="epoch"):
        load_recipe("fsdd-tiny", ["epoch=3"])
    with pytest.raises(ConfigError, match="layer_decay"):
        Recipe(layer_decay=1.5)
    with pytest.raises(ConfigError, match="recipe"):
        load_recipe("no-such-recipe")
    with pytest.raises(ConfigError, match="head_init"):
        load_recipe("fsdd-tiny", ["head_init=linear"])
    f = tmp_path / "r.yaml"
    f.write_text("epochs: 2\nmixup: 0.4\n")
    assert load_recipe(f).mixup == 0.4


def test_lr_schedule_warmup_then_cosine():
    # fine-tuning uses the shared schedule (audiopg.core.schedule): min_lr is reached at the last step
    total, warm, peak, min_lr = 101, 10, 1e-3, 1e-5
    lrs = [lr_at(s, peak, min_lr, warm, total) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 10) and lrs[9] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(min_lr)
    assert lrs[55] == pytest.approx(min_lr + (peak - min_lr) * 0.5)


def test_spec_augment_and_patch_masking():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(4, 64, 128)
    y = spec_augment(x, 20, 30, 1, g)
    assert y.shape == x.shape and (y == 0).any() and (y == 1).any()
    zero_cols = (y == 0).all(dim=2).sum(dim=1)
    assert (zero_cols <= 20).all()
    assert spec_augment(x, 0, 0, 1, g) is x
    ids = patch_keep_ids(3, 8, 8, 0.25, 0.25, g)
    assert ids.shape == (3, 36)  # (8 - 2) * (8 - 2) tokens kept
    assert all(len(set(r.tolist())) == 36 for r in ids)
    assert patch_keep_ids(2, 4, 8, 0.0, 0.0, g) is None


def test_layer_wise_lr_decay_groups():
    from audiopg.model import ModelConfig, ViTEncoder

    cfg = ModelConfig(num_frames=32, embed_dim=32, depth=3, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2)
    model = FinetuneModel(ViTEncoder(cfg), 5)
    groups = model.param_groups(0.05, 0.5)
    seen = {id(p) for g in groups for p in g["params"]}
    assert seen == {id(p) for p in model.parameters()}
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert scale["head.weight"] == 1.0
    assert scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.5 ** 4)
    assert scale["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(0.5 ** 3)
    assert scale["encoder.blocks.2.mlp.fc1.weight"] == pytest.approx(0.5)
    decay = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert decay["head.bias"] == 0.0 and decay["encoder.blocks.1.norm1.weight"] == 0.0 and decay["head.weight"] == 0.05


# ----------------------------------------------------------------------------- real steps
def test_finetune_a_few_steps_loss_decreases_and_outputs_written(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    data = tone_folder(tmp_path / "data")
    ds = load_dataset("folder", data)
    recipe = Recipe(name="smoke", **SMOKE)
    res = run_finetune(ds, ckpt, recipe, tmp_path / "out", device="cpu", progress=False)
    out = tmp_path / "out"
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [l["loss"] for l in lines if "loss" in l]
    assert len(steps) == 30  # 30 epochs x 1 step (12 training clips, batch 8, drop_last)
    assert np.mean(steps[-5:]) < 0.6 * np.mean(steps[:5])
    assert any(l.get("event") == "test" for l in lines)
    fold = res["splits"][0]["name"]
    assert (out / fold / "model.safetensors").exists()
    assert (out / "results.json").exists() and (out / "results.md").exists() and (out / "recipe.yaml").exists()
    assert (out / "confusion_finetuned.png").exists()
    assert res["models"]["finetuned"]["mean"] >= 0.75
    # the exported encoder loads as an ordinary pretrained encoder
    from safetensors import safe_open

    from audiopg.model.encoder import Encoder

    enc = Encoder.from_pretrained(out / fold)
    assert enc.metadata["finetune"]["task"] == "folder"
    with safe_open(str(out / fold / "model.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["audiopg_finetune"])
        assert "head.weight" in f.keys()
    assert meta["classes"] == ["high", "low"] and meta["recipe"]["name"] == "smoke"


def test_finetune_with_augmentations_random_baseline_and_skip_bad(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    data = tone_folder(tmp_path / "data", n=5)
    (data / "low" / "bad.wav").write_bytes(b"")
    ds = load_dataset("folder", data)
    recipe = Recipe(name="aug", **{**SMOKE, "epochs": 2, "mixup": 0.5, "specaug_time": 8, "specaug_freq": 16,
                                   "mask_t_prob": 0.25, "mask_f_prob": 0.25, "drop_path": 0.1})
    from audiopg.core.errors import AudioFileError

    with pytest.raises(AudioFileError, match="bad.wav"):
        run_finetune(ds, ckpt, recipe, tmp_path / "o1", device="cpu", progress=False)
    res = run_finetune(ds, ckpt, recipe, tmp_path / "o2", device="cpu", progress=False, skip_bad=True,
                       baselines=["random"])
    assert set(res["models"]) == {"finetuned", "random"}
    assert [Path(s["path"]).name for s in res["dataset"]["skipped"]] == ["bad.wav"]
    assert (tmp_path / "o2" / f"random-{res['splits'][0]['name']}" / "model.safetensors").exists()


def test_finetune_multilabel_selects_on_validation(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    root = tmp_path / "fsd"
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True)
    with open(gt / "vocabulary.csv", "w", newline="") as f:
        csv.writer(f).writerows([(0, "Bark", "/m/a"), (1, "Rain", "/m/b")])
    rng = np.random.default_rng(0)

    def clip(path: Path, freq: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(4000) / 16000
        sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32),
                 16000)

    dev, ev = [["fname", "labels", "mids", "split"]], [["fname", "labels", "mids"]]
    for i in range(16):
        clip(root / "FSD50K.dev_audio" / f"{i}.wav", 400 if i % 2 else 3000)
        dev.append([i, "Bark" if i % 2 else "Rain", "x", "val" if i >= 12 else "train"])
    for i in range(4):
        clip(root / "FSD50K.eval_audio" / f"{100 + i}.wav", 400 if i % 2 else 3000)
        ev.append([100 + i, "Bark" if i % 2 else "Rain", "x"])
    for name, rows in (("dev.csv", dev), ("eval.csv", ev)):
        with open(gt / name, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    ds = load_dataset("fsd50k", root)
    recipe = Recipe(name="ml", **{**SMOKE, "epochs": 3, "loss": "bce"})
    res = run_finetune(ds, ckpt, recipe, tmp_path / "out", device="cpu", progress=False)
    assert res["dataset"]["metric"] == "mAP"
    lines = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_mAP" in l for l in lines) == 3
    test = [l for l in lines if l.get("event") == "test"][0]
    assert "best on validation" in test["chosen"] and math.isfinite(test["test_mAP"])
    assert not (tmp_path / "out" / "confusion_finetuned.png").exists()  # multi-label: no confusion matrix


def test_finetune_cli(tmp_path, capsys):
    from audiopg.cli import eval as eval_cli

    ckpt = tiny_checkpoint(tmp_path / "run")
    data = tone_folder(tmp_path / "data", n=5)
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "--task", "folder", "--data-root", str(data), "--checkpoint", str(ckpt),
                              "--recipe", "fsdd-tiny", "--set", "epochs=1", "--set", "folds=1", "--set",
                              "clip_frames=32", "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"])
    assert args.func(args) == 0
    assert "finetuned" in capsys.readouterr().out
    assert (tmp_path / "o" / "results.md").exists()


# ----------------------------------------------------------------------------- features once, LP-FT
def test_log_mel_features_are_computed_once_per_clip(tmp_path, monkeypatch):
    from audiopg.audio.fbank import Fbank

    calls = []
    forward = Fbank.forward

    def counting(self, waveform):
        calls.append(tuple(waveform.shape))
        return forward(self, waveform)

    monkeypatch.setattr(Fbank, "forward", counting)
    ckpt = tiny_checkpoint(tmp_path / "run")
    ds = load_dataset("folder", tone_folder(tmp_path / "data", n=5))
    recipe = Recipe(name="once", **{**SMOKE, "epochs": 3, "folds": 2, "mixup": 0.5, "head_init": "probe"})
    res = run_finetune(ds, ckpt, recipe, tmp_path / "out", device="cpu", progress=False, baselines=["random"])
    # 2 models x 2 splits x 3 epochs of training, probe-head features and evaluation: one fbank per clip
    assert len(calls) == len(ds.items) == 10
    assert all(len(shape) == 1 for shape in calls)
    assert set(res["models"]) == {"finetuned", "random"} and len(res["splits"]) == 2
    # over the memory budget nothing is kept: the clips are transformed again whenever they are used
    calls.clear()
    run_finetune(ds, ckpt, Recipe(name="nocache", **{**SMOKE, "epochs": 1, "folds": 1, "cache_audio_gb": 0.0}),
                 tmp_path / "out2", device="cpu", progress=False)
    assert len(calls) > len(ds.items)


def test_probe_head_predicts_what_the_linear_probe_predicts():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from audiopg.model import ModelConfig, ViTEncoder

    torch.manual_seed(0)
    cfg = ModelConfig(num_frames=32, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2)
    model = FinetuneModel(ViTEncoder(cfg), 3).eval()
    g = torch.Generator().manual_seed(1)
    y = np.repeat(np.arange(3), 16)
    # three classes of spectrograms that differ in level and in which band is loud
    spec = torch.randn(48, 32, 128, generator=g)
    for c in range(3):
        spec[y == c, :, 40 * c:40 * c + 40] += 1.5
    with torch.no_grad():
        feats = model.pooled(spec).numpy()
    rows = np.arange(48)
    train, test = rows[rows % 4 != 0], rows[rows % 4 == 0]
    info = probe_head(model, feats, y, Split("s", train, train), groups=np.array([f"#{i}" for i in rows]),
                      multi=False, seed=0)
    assert info["C"] in (0.001, 0.01, 0.1, 1.0, 10.0, 100.0) and 0.0 <= info["train_score"] <= 1.0
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=info["C"], max_iter=1000)).fit(feats[train], y[train])
    with torch.no_grad():
        probs = torch.softmax(model(spec[test]), dim=-1).numpy()
    np.testing.assert_array_equal(probs.argmax(axis=1), probe.predict(feats[test]))
    np.testing.assert_allclose(probs, probe.predict_proba(feats[test]), atol=2e-3)
    assert (probe.predict(feats[test]) == y[test]).mean() > 0.5  # the fixture is learnable: a real comparison


def test_probe_head_binary_and_multi_label():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from audiopg.model import ModelConfig, ViTEncoder

    cfg = ModelConfig(num_frames=32, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 32)).astype(np.float32)
    groups = np.array([f"#{i}" for i in range(40)])
    split = Split("s", np.arange(40), np.arange(40))
    # binary: the two outputs' softmax equals the probe's probability
    model = FinetuneModel(ViTEncoder(cfg), 2).eval()
    y = (x[:, 0] + 0.3 * rng.standard_normal(40) > 0).astype(int)
    info = probe_head(model, x, y, split, groups=groups, multi=False, seed=0)
    lr = LogisticRegression(C=info["C"], max_iter=1000).fit(StandardScaler().fit_transform(x), y)
    with torch.no_grad():
        ours = torch.softmax(model.head(model.head_norm(torch.from_numpy(x))), dim=-1)[:, 1].numpy()
    np.testing.assert_allclose(ours, lr.predict_proba(StandardScaler().fit_transform(x))[:, 1], atol=1e-3)
    # multi-label: one binary probe per class; a class the training part always shows starts at probability ~1
    model = FinetuneModel(ViTEncoder(cfg), 3).eval()
    ym = np.stack([y, 1 - y, np.ones(40, dtype=int)], axis=1)
    c = probe_head(model, x, ym, split, groups=groups, multi=True, seed=0)["C"]
    with torch.no_grad():
        p = torch.sigmoid(model.head(model.head_norm(torch.from_numpy(x)))).numpy()
    z = StandardScaler().fit_transform(x)
    for k in (0, 1):
        want = LogisticRegression(C=c, max_iter=1000).fit(z, ym[:, k]).predict_proba(z)[:, 1]
        np.testing.assert_allclose(p[:, k], want, atol=1e-3)
    assert (p[:, 2] > 0.99).all()


def test_lp_ft_run_starts_from_the_probe(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    ds = load_dataset("folder", tone_folder(tmp_path / "data"))
    recipe = Recipe(name="lpft", **{**SMOKE, "epochs": 1, "head_init": "probe"})
    res = run_finetune(ds, ckpt, recipe, tmp_path / "out", device="cpu", progress=False)
    lines = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    head = [l for l in lines if l.get("event") == "probe_head"]
    assert len(head) == 1 and head[0]["train_score"] == 1.0  # two tones far apart: the probe separates them
    fold = res["models"]["finetuned"]["folds"][0]
    assert fold["probe_head"]["C"] == head[0]["C"]
    assert res["models"]["finetuned"]["mean"] >= 0.75  # one epoch from the probe already classifies the tones
