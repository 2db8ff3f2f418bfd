"""Tests for the pre-training objectives: mae, mae+factors, latent, latent+factors and several masks per clip.

Every run uses the very small model of tests/test_train.py (1 block, 32-wide, 32 frames x 32 mel bins, 8x8
patches) on 0.32 s clips, so a step takes milliseconds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from audiopg import Encoder
from audiopg.audio.fbank import FbankStats
from audiopg.core.errors import ConfigError
from audiopg.model import MaskedAutoencoder, ViTEncoder
from audiopg.model.checkpoint import load_encoder_file
from audiopg.model.factor_heads import (
    FactorHeads,
    FactorTarget,
    factor_values,
    world_factor_targets,
)
from audiopg.model.objectives import ObjectiveConfig, PretrainModel, ema_decay_at
from audiopg.synth import World, load_world_config
from audiopg.train.budget import UNTIMED_STEPS, calibrate
from audiopg.train.config import PretrainConfig, build_pretrain_config
from audiopg.train.data import SynthSpectrograms
from audiopg.train.pretrain import pretrain
from audiopg.train.run_dir import load_state
from audiopg.train.step import StepRunner, build_model, build_optimizer

torch.set_num_threads(2)

TINY_MODEL = dict(preset="tiny", num_frames=32, num_mel_bins=32, patch_size=8, embed_dim=32, depth=1,
                  num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
TINY_WORLD = dict(preset="paper", events={"min_seconds": 0.1})


def tiny(**changes) -> PretrainConfig:
    data = dict(model=TINY_MODEL, world=TINY_WORLD, batch_size=4, steps=8, stats_clips=8, progress=False, seed=0)
    data.update(changes)
    return PretrainConfig.from_dict(data).resolved()


def records(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in lines] == list(range(1, len(lines) + 1))
    return lines


def model_config(**changes):
    return tiny(model={**TINY_MODEL, **changes}).model_config()


def spec_batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 32, 32, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, key", [
    (["objective=foo"], "objective"),
    (["masks_per_clip=0"], "masks_per_clip"),
    (["masks_per_clip=1.5"], "masks_per_clip"),
    (["ema_decay=[0.99, 1.0]"], "ema_decay[1]"),
    (["ema_decay=[-0.1, 0.9]"], "ema_decay[0]"),
    (["factor_loss_weight=-0.1"], "factor_loss_weight"),
    (["utterance_loss_weight=-1"], "utterance_loss_weight"),
    (["latent_target_layers=0"], "latent_target_layers"),
    (["model.depth=2", "latent_target_layers=3"], "latent_target_layers"),  # more than the model's blocks
])
def test_bad_objective_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        build_pretrain_config(None, overrides, {"steps": 3})
    assert err.value.key == key


def test_defaults_are_todays_mae_and_old_configs_load_as_mae():
    cfg = PretrainConfig.from_dict({"model": {"preset": "tiny"}, "steps": 3})  # an old config.json: no new keys
    assert (cfg.objective, cfg.masks_per_clip) == ("mae", 1)
    obj = cfg.objective_config()
    assert obj == ObjectiveConfig() and not obj.latent and not obj.factors
    assert cfg.factor_loss_weight == 0.1 and cfg.ema_decay == (0.99, 0.999) and cfg.utterance_loss_weight == 1.0
    assert tiny(objective="latent+factors").objective_config().latent and ObjectiveConfig("mae+factors").factors


def test_a_world_without_factors_refuses_the_factor_objective(tmp_path):
    one = {**TINY_WORLD, "sources": {"fm": {"enabled": False}, "pulse": {"enabled": False},
                                     "noise": {"enabled": False}},
           "lowpass": {"enabled": False}, "background": {"enabled": False},
           "events": {"count": [2, 2], "min_seconds": 0.1}}
    world = tiny(world=one).world_config()
    assert [t.name for t in world_factor_targets(world)] == ["log2_f0"]  # one source, nothing else varies
    one["sources"]["harmonic"] = {"f0": [200.0, 200.0]}
    assert world_factor_targets(tiny(world=one).world_config()) == ()
    with pytest.raises(ConfigError) as err:
        pretrain(tiny(world=one, objective="mae+factors"), tmp_path / "run", log=lambda m: None)
    assert err.value.key == "objective"


# ----------------------------------------------------------------------------- mae stays mae
def test_mae_objective_is_the_masked_autoencoder():
    cfg = model_config()
    torch.manual_seed(0)
    mae = MaskedAutoencoder(cfg)
    torch.manual_seed(0)
    model = PretrainModel(cfg, ObjectiveConfig())
    a, b = mae.state_dict(), model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = spec_batch(4)
    out = model(x, {}, gen(5))
    assert out.parts == {}
    assert torch.equal(out.loss, mae(x, generator=gen(5)).loss)  # the same ops, the same masks


def test_masks_per_clip_gives_m_different_masks_of_each_clip(monkeypatch):
    m, b = 3, 4
    model = PretrainModel(model_config(), ObjectiveConfig(masks_per_clip=m))
    seen = {}
    original = model.forward_encoder

    def spy(views, ratio, generator):
        latent, mask, ids_restore = original(views, ratio, generator)
        seen.update(views=views, mask=mask)
        return latent, mask, ids_restore

    monkeypatch.setattr(model, "forward_encoder", spy)
    x = spec_batch(b)
    g = gen(1)
    model(x, {}, g)
    views, mask = seen["views"][:, 0], seen["mask"]
    assert views.shape[0] == mask.shape[0] == b * m
    for i in range(b):
        for j in range(m):
            assert torch.equal(views[i * m + j], x[i])  # every view is the same spectrogram...
        masks = mask[i * m:(i + 1) * m]
        for j in range(m):
            for k in range(j + 1, m):
                assert not torch.equal(masks[j], masks[k])  # ...under its own mask
    assert torch.equal(mask.sum(1), torch.full((b * m,), 12.0))  # 75 % of 16 patches hidden in every view
    # one draw of B*M masks from the mask generator: the same as masking B*M clips at once
    h = gen(1)
    torch.rand(b * m, 16, generator=h)
    assert torch.equal(g.get_state(), h.get_state())


# ----------------------------------------------------------------------------- factor targets
def test_factor_targets_are_the_worlds_factors_transformed():
    fb_world = tiny().world_config()
    targets = world_factor_targets(fb_world)
    assert [t.name for t in targets] == ["source", "log2_f0", "log2_cutoff", "event_count", "snr_db"]
    cfg = tiny()
    data = SynthSpectrograms(fb_world, cfg.fbank_config(), FbankStats(mean=-3.0, std=2.5), "cpu", targets)
    g = gen(11)
    batch = data.draw(16, g)
    plain = SynthSpectrograms(fb_world, cfg.fbank_config(), FbankStats(mean=-3.0, std=2.5), "cpu")
    g2 = gen(11)
    assert torch.equal(batch.spec, plain.batch(16, g2))  # the same clips from the same random stream
    assert torch.equal(g.get_state(), g2.get_state())
    f = World(fb_world).sample(16, gen(11)).factors
    v = batch.factors
    assert torch.equal(v["source"], torch.nn.functional.one_hot(f["source"], 4).float())
    lo, hi = math.log2(50.0), math.log2(2000.0)  # the paper's tonal sources: 50..2000 Hz
    f0 = (torch.log2(f["f0"]) - (lo + hi) / 2) / ((hi - lo) / math.sqrt(12))
    assert torch.equal(torch.isnan(v["log2_f0"]), torch.isnan(f["f0"]))  # noise clips have no f0: absent
    assert torch.isnan(v["log2_f0"]).any() and not torch.isnan(v["log2_f0"]).all()
    torch.testing.assert_close(v["log2_f0"], f0, equal_nan=True)
    lo, hi = math.log2(200.0), math.log2(6000.0)
    cutoff = (torch.log2(f["cutoff"]) - (lo + hi) / 2) / ((hi - lo) / math.sqrt(12))
    torch.testing.assert_close(v["log2_cutoff"], cutoff, equal_nan=True)
    assert torch.isnan(v["log2_cutoff"]).any()  # clips that were not low-passed
    torch.testing.assert_close(v["event_count"], (f["event_count"].float() - 3.0) / math.sqrt(2.0))
    snr = f["signal_peak_db"] - 20 * torch.log10(f["noise_level"])
    lo, hi = -20 * math.log10(0.02), -20 * math.log10(0.001)
    torch.testing.assert_close(v["snr_db"], (snr - (lo + hi) / 2) / ((hi - lo) / math.sqrt(12)))


def test_the_rich_world_adds_its_own_targets():
    world = load_world_config("rich", ["seconds=0.32", "events.min_seconds=0.1"])
    targets = world_factor_targets(world)
    names = [t.name for t in targets]
    assert names == ["source", "log2_f0", "log2_cutoff", "event_count", "snr_db", "scene_count", "log2_rt60",
                     "vowels"]
    by_name = {t.name: t for t in targets}
    assert by_name["source"].classes == 10 and by_name["source"].norm == pytest.approx(math.log(10))
    f = World(world).sample(64, gen(2), fixed={"source": torch.tensor([4] * 32 + [0] * 32)}).factors  # 4: voice
    v = factor_values(targets, f)
    vowels = v["vowels"]
    assert torch.isnan(vowels[32:]).all() and not torch.isnan(vowels[:32]).any()  # no voice: absent
    count = int(f["syllables"][0])
    expected = torch.bincount(f["vowels"][0, :count], minlength=10).float() / count
    torch.testing.assert_close(vowels[0], expected)
    torch.testing.assert_close(vowels[:32].sum(1), torch.ones(32))
    assert torch.equal(torch.isnan(v["log2_rt60"]), torch.isnan(f["rt60"]))  # dry clips: absent
    torch.testing.assert_close(v["scene_count"], (f["scene_count"].float() - 2.5) / math.sqrt(15 / 12))


def test_factor_heads_score_only_the_clips_a_factor_applies_to():
    targets = (FactorTarget("a"), FactorTarget("c", classes=3, norm=math.log(3)), FactorTarget("gone"))
    heads = FactorHeads(targets, 8)
    pooled = torch.randn(4, 8, generator=gen(0))
    nan = math.nan
    values = {"a": torch.tensor([0.5, nan, -1.0, nan]),
              "c": torch.tensor([[1.0, 0, 0], [nan, nan, nan], [0, 0.5, 0.5], [0, 0, 1.0]]),
              "gone": torch.full((4,), nan)}
    mean, losses = heads(pooled, values)
    a = heads.heads["a"](pooled)[:, 0].detach()
    expected_a = ((a[0] - 0.5) ** 2 + (a[2] + 1.0) ** 2) / 2
    logp = heads.heads["c"](pooled).log_softmax(-1).detach()
    expected_c = -(logp[[0, 2, 3]] * values["c"][[0, 2, 3]]).sum(-1).mean() / math.log(3)
    torch.testing.assert_close(losses["a"].detach(), expected_a)
    torch.testing.assert_close(losses["c"].detach(), expected_c)
    assert losses["gone"].item() == 0.0
    torch.testing.assert_close(mean.detach(), (expected_a + expected_c) / 2)  # absent heads do not dilute
    mean.backward()
    assert all(torch.isfinite(p.grad).all() for p in heads.parameters())


# ----------------------------------------------------------------------------- latent
def test_latent_targets_average_the_teachers_normalized_blocks():
    cfg = model_config(depth=3)
    model = PretrainModel(cfg, ObjectiveConfig("latent", latent_target_layers=2))
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(id(p) not in {id(q) for g in model.param_groups(0.05) for q in g["params"]}
               for p in model.teacher.parameters())
    x = spec_batch(3)
    _, layers = model.teacher.forward_features(x, return_layers=True)

    def inorm(h):  # every channel over the patch tokens of its clip
        h = h[:, 1:]
        return (h - h.mean(1, keepdim=True)) / (h.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()

    y = (inorm(layers[1]) + inorm(layers[2])) / 2
    y = (y - y.mean(-1, keepdim=True)) / (y.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(model.latent_targets(x), y, rtol=1e-4, atol=1e-4)
    out = model(x, {}, gen(0))
    assert set(out.parts) == {"latent", "utterance"}
    torch.testing.assert_close(out.loss, out.parts["latent"] + out.parts["utterance"])


def test_the_teacher_is_an_annealed_ema_of_the_student():
    assert ema_decay_at(0, 100, (0.99, 0.999)) == 0.99
    assert ema_decay_at(50, 100, (0.99, 0.999)) == pytest.approx(0.9945)
    assert ema_decay_at(100, 100, (0.99, 0.999)) == pytest.approx(0.999)
    cfg = tiny(objective="latent", ema_decay=[0.9, 0.5], lr=1e-2)
    model = build_model(cfg, torch.device("cpu"))
    runner = StepRunner(model, build_optimizer(model, cfg, torch.device("cpu")), cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())  # starts as a copy
    data = SynthSpectrograms(cfg.world_config(), cfg.fbank_config(), FbankStats(mean=-3.0, std=2.5))
    runner.forward_backward(data.draw(4, gen(0)), gen(1))
    runner.apply(1e-2, 5, 10)  # decay 0.9 + (0.5 - 0.9) * 5 / 10 = 0.7
    student = model.encoder.state_dict()
    moved = 0
    for k, t in model.teacher.state_dict().items():
        torch.testing.assert_close(t, 0.7 * before[k] + 0.3 * student[k])
        moved += not torch.equal(t, before[k])
    assert moved > 0


@pytest.mark.parametrize("objective, masks", [("mae", 1), ("mae+factors", 2), ("latent", 2), ("latent+factors", 1)])
def test_each_objective_trains_with_a_finite_falling_loss(tmp_path, objective, masks):
    run = tmp_path / "run"
    logged: list[str] = []
    cfg = tiny(objective=objective, masks_per_clip=masks, steps=24, batch_size=8, lr=3e-3, warmup_steps=2)
    result = pretrain(cfg, run, log=logged.append)
    assert result.status == "finished"
    lines = records(run)
    loss = [r["loss"] for r in lines]
    assert all(math.isfinite(v) for v in loss)
    assert sum(loss[-4:]) / 4 < 0.8 * sum(loss[:4]) / 4, loss
    parts = {k for k in lines[0] if k.startswith("loss_")}
    main = "latent" if objective.startswith("latent") else "mae"
    expected = set() if objective == "mae" else {f"loss_{main}"}
    if objective.startswith("latent"):
        expected.add("loss_utterance")
    if objective.endswith("factors"):
        expected |= {"loss_factors", "loss_factor_source", "loss_factor_log2_f0", "loss_factor_log2_cutoff",
                     "loss_factor_event_count", "loss_factor_snr_db"}
    assert parts == expected
    for r in lines[1:]:  # the loss is the main part plus the weighted others
        if objective != "mae":
            total = r[f"loss_{main}"] + r.get("loss_utterance", 0.0) + 0.1 * r.get("loss_factors", 0.0)
            assert r["loss"] == pytest.approx(total, abs=1e-5)
    # the exported encoder is the student, in today's format; the heads and the teacher stay behind
    weights, _ = load_encoder_file(run / "encoder.safetensors")
    assert set(weights) == set(ViTEncoder(cfg.model_config()).state_dict())
    state = load_state(run / "state.pt")["model"]
    for k, v in weights.items():
        assert torch.equal(v, state[f"encoder.{k}"])
    assert any(k.startswith("teacher.") for k in state) == objective.startswith("latent")
    assert any(k.startswith("factor_heads.") for k in state) == objective.endswith("factors")
    Encoder.from_pretrained(run / "encoder.safetensors")
    assert (run / "reconstructions.png").exists() != objective.startswith("latent")
    assert any("reconstructions.png" in m and "pixel decoder" in m for m in logged) == objective.startswith("latent")


def test_latent_resume_is_exact(tmp_path):
    cfg = tiny(objective="latent+factors", masks_per_clip=2)
    reference = tmp_path / "reference"
    pretrain(cfg, reference, log=lambda m: None)
    run = tmp_path / "run"

    def stop_at_3(trainer, step, loss):
        if step == 3:
            trainer.request_stop()

    first = pretrain(cfg, run, on_step=stop_at_3, log=lambda m: None)
    assert first.status == "interrupted" and first.step == 3
    second = pretrain(cfg, run, resume=True, log=lambda m: None)
    assert second.status == "finished" and second.step == 8
    a, b = records(run), records(reference)
    for ra, rb in zip(a, b):
        for k in ra:
            if k.startswith("loss"):
                assert ra[k] == pytest.approx(rb[k], abs=1e-5), (ra["step"], k)
    sa, sb = load_state(run / "state.pt")["model"], load_state(reference / "state.pt")["model"]
    assert set(sa) == set(sb) and any(k.startswith("teacher.") for k in sa)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)


def test_calibration_times_the_objectives_step_and_undoes_the_teacher(monkeypatch):
    cfg = tiny(objective="latent+factors", masks_per_clip=2, steps=None, minutes=1.0, fit_steps=2)
    world = cfg.world_config()
    targets = world_factor_targets(world)
    data = SynthSpectrograms(world, cfg.fbank_config(), FbankStats(mean=-3.0, std=2.5), "cpu", targets)
    model = build_model(cfg, torch.device("cpu"), targets)
    runner = StepRunner(model, build_optimizer(model, cfg, torch.device("cpu")), cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    original = model.update_teacher

    def counted(step, total):
        calls.append(step)
        original(step, total)

    monkeypatch.setattr(model, "update_teacher", counted)
    seen = []
    forward = runner.net.forward

    def spy(spec, factors, generator):
        seen.append(set(factors))
        return forward(spec, factors, generator)

    monkeypatch.setattr(runner.net, "forward", spy)
    step_s = calibrate(runner, data, cfg, 0, lambda values: values, lambda: False)
    assert step_s > 0 and calls == list(range(UNTIMED_STEPS + 2))
    assert seen and all(s == {t.name for t in targets} for s in seen)  # the real step, factors and all
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # teacher included
