"""Analysis numerics on planted embeddings, and an end-to-end ``audiopg analyze`` on a tiny random checkpoint."""
import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from audiopg.analysis.decoding import group_folds, logistic_cv, ridge_cv, transfer_probe
from audiopg.analysis.directions import (
    angle_deg,
    pairwise_angles,
    principal_angles_deg,
    probe_directions,
    random_angle_chance,
    random_subspace_chance,
    rank_features,
)
from audiopg.analysis.mi import mutual_information
from audiopg.analysis.report import analyze_layers


def _plant(n=300, D=48, directions=None, scale=3.0, noise=1.0, seed=0):
    """Factors a, b ~ N(0, 1) written into columns of ``directions`` (D, 2) plus isotropic noise."""
    rng = np.random.default_rng(seed)
    if directions is None:
        directions = np.linalg.qr(rng.standard_normal((D, D)))[0][:, :2]
    F = rng.standard_normal((n, 2))
    X = scale * F @ directions.T + noise * rng.standard_normal((n, D))
    return X, F[:, 0], F[:, 1], directions


# ----------------------------------------------------------------------------- decodability
def test_planted_factors_decode_with_r2_near_1_and_shuffled_near_0():
    X, a, b, _ = _plant()
    for y in (a, b):
        res = ridge_cv(X, y)
        assert res["r2"] > 0.85 and res["corr"] > 0.92
    shuffled = ridge_cv(X, np.random.default_rng(1).permutation(a))
    assert -0.1 < shuffled["r2"] < 0.05
    # R^2 is not scale dependent
    assert ridge_cv(X, 1000 * a + 5)["r2"] == pytest.approx(ridge_cv(X, a)["r2"], abs=1e-6)


def test_group_folds_never_split_a_group():
    groups = np.repeat(np.arange(7), 5)
    folds = group_folds(groups, 3, seed=0)
    assert len(folds) == 3
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen) == list(range(35))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])


def test_grouped_cv_does_not_leak_base_clips():
    """y is a per-group constant and X encodes only group identity: a probe can memorize groups but not
    generalize to new ones.  Clip-level folds would report a high R^2; group folds must not."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 8)
    signature = rng.standard_normal((30, 40)) * 3
    X = signature[groups] + 0.3 * rng.standard_normal((len(groups), 40))
    y = rng.standard_normal(30)[groups]
    leaky = ridge_cv(X, y)  # clip-level folds: the same base clip on both sides
    honest = ridge_cv(X, y, groups)
    assert leaky["r2"] > 0.8
    assert honest["r2"] < 0.2


def test_logistic_accuracy_and_chance():
    rng = np.random.default_rng(0)
    n, D = 240, 30
    labels = rng.integers(0, 3, n)
    centers = rng.standard_normal((3, D)) * 1.5
    X = centers[labels] + rng.standard_normal((n, D))
    res = logistic_cv(X, labels)
    assert res["accuracy"] > 0.9
    assert res["chance"] == pytest.approx(np.bincount(labels).max() / n)
    shuffled = logistic_cv(X, rng.permutation(labels))
    assert shuffled["accuracy"] < res["chance"] + 0.12


# ----------------------------------------------------------------------------- angles
def test_orthogonal_plants_give_90_degrees_and_collinear_give_0():
    X, a, b, _ = _plant()
    da, db = probe_directions(X, a, permutations=10), probe_directions(X, b, permutations=10)
    assert abs(angle_deg(da.decode, db.decode) - 90) < 8
    assert abs(angle_deg(da.encode, db.encode) - 90) < 8
    # collinear: both factors written into the same direction.  Jointly (both vary in the same clips) the
    # encoding directions coincide; decoding directions are then ill-posed (a+b is all that can be read),
    # so they are compared as in sweeps: each factor varying in its own clips.
    # (a ridge direction from n clips in D units scatters by ~sqrt(D / n) rad: 16 units, 1000 clips)
    rng = np.random.default_rng(3)
    n, D = 1000, 16
    u = rng.standard_normal(D)
    u /= np.linalg.norm(u)
    a2, b2 = rng.standard_normal(n), rng.standard_normal(n)
    X2 = 3 * np.outer(a2 + b2, u) + rng.standard_normal((n, D))
    assert angle_deg(probe_directions(X2, a2).encode, probe_directions(X2, b2).encode) < 10
    Xa = 3 * np.outer(a2, u) + rng.standard_normal((n, D))
    Xb = 3 * np.outer(b2, u) + rng.standard_normal((n, D))
    da2, db2 = probe_directions(Xa, a2), probe_directions(Xb, b2)
    assert angle_deg(da2.decode, db2.decode) < 15
    assert angle_deg(da2.encode, db2.encode) < 10
    assert angle_deg(da2.decode, probe_directions(Xb, -b2).decode) > 165  # the angle keeps the factors' signs
    # the split-half angle measures that sampling scatter: small here, larger with fewer clips
    assert da2.split_half["decode"] < 25
    few = probe_directions(Xa[:80], a2[:80])
    assert few.split_half["decode"] > da2.split_half["decode"]
    # and orthogonal plants seen the same way stay orthogonal
    v = np.linalg.qr(np.stack([u, rng.standard_normal(D)], 1))[0][:, 1]
    Xv = 3 * np.outer(b2, v) + rng.standard_normal((n, D))
    assert abs(angle_deg(da2.decode, probe_directions(Xv, b2).decode) - 90) < 8


def test_pairwise_angles_with_permutation_null():
    X, a, b, _ = _plant(seed=4)
    rng = np.random.default_rng(5)
    u = np.linalg.qr(rng.standard_normal((48, 3)))[0]
    c = rng.standard_normal(300)
    X = X + 3 * np.outer(c, u[:, 2])
    dirs = {"a": probe_directions(X, a, permutations=15, seed=1), "b": probe_directions(X, b, permutations=15, seed=2),
            "a_again": probe_directions(X, a + 0.05 * c, permutations=15, seed=3)}
    res = pairwise_angles(dirs)
    assert res["factors"] == ["a", "b", "a_again"]
    ab = res["pairs"]["a|b"]
    null = ab["null_decode"]
    assert null["n"] == 225 and 80 < null["mean"] < 100
    assert null["q2.5"] <= ab["decode"] <= null["q97.5"]  # orthogonal: inside the null
    same = res["pairs"]["a|a_again"]
    assert same["decode"] < 10 and same["decode"] < null["q2.5"]  # collinear: far below it
    assert same["decode_z"] < -3
    assert np.allclose(np.diag(np.array(res["decode"])), 0, atol=1e-5)


def test_random_direction_chance_matches_theory():
    for D in (16, 192, 768):
        ch = random_angle_chance(D, samples=3000, seed=D)
        assert ch["mean"] == 90.0
        theory = math.degrees(1 / math.sqrt(D))
        assert ch["std"] == pytest.approx(theory, rel=0.05)
        assert ch["sampled"]["mean"] == pytest.approx(90.0, abs=3 * ch["std"] / math.sqrt(6000) + 0.05)
        assert ch["sampled"]["std"] == pytest.approx(ch["std"], rel=0.06)
        assert ch["q2.5"] + ch["q97.5"] == pytest.approx(180.0)
    # exact quantiles: 95 % of sampled angles fall in [q2.5, q97.5]
    rng = np.random.default_rng(0)
    D = 64
    ch = random_angle_chance(D)
    u, v = rng.standard_normal((2, 20000, D))
    ang = np.degrees(np.arccos(np.sum(u * v, 1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)))
    inside = np.mean((ang >= ch["q2.5"]) & (ang <= ch["q97.5"]))
    assert inside == pytest.approx(0.95, abs=0.01)


def test_principal_angles_and_subspaces():
    e = np.eye(6)
    np.testing.assert_allclose(principal_angles_deg(e[:, [0, 1]], e[:, [0, 2]]), [0.0, 90.0], atol=1e-6)
    rot = np.cos(np.radians(30)) * e[:, 1] + np.sin(np.radians(30)) * e[:, 3]
    np.testing.assert_allclose(principal_angles_deg(e[:, [0, 1]], np.stack([e[:, 0] * 2, rot], 1)), [0.0, 30.0], atol=1e-6)
    sub = random_subspace_chance(200, 3, samples=50)
    assert 70 < sub["smallest"]["mean"] < 90
    # rank features: P1 is monotone in the factor, features orthogonal-ish and within [-1, 1]
    y = np.random.default_rng(0).standard_normal(500)
    R = rank_features(y, 3)
    assert R.shape == (500, 3) and np.all(np.abs(R) <= 1 + 1e-12)
    assert np.all(np.diff(R[np.argsort(y), 0]) > 0)
    assert rank_features(np.repeat([1.0, 2.0], 5), 3).shape == (10, 1)  # two values: one feature


def test_planted_subspaces_are_orthogonal_against_chance():
    X, a, b, _ = _plant(n=400, D=40, seed=7)
    res = pairwise_angles({"a": probe_directions(X, a, k=3, permutations=8),
                           "b": probe_directions(X, b, k=3, permutations=8)})
    pa = res["pairs"]["a|b"]["principal"]
    assert len(pa) == 3 and pa == sorted(pa)
    assert pa[0] > 45  # nothing shared; a collinear plant gives ~0
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(1000), rng.standard_normal(1000)
    Xa = 3 * np.outer(a, np.eye(16)[0]) + rng.standard_normal((1000, 16))  # each factor in its own clips,
    Xb = 3 * np.outer(b, np.eye(16)[0]) + rng.standard_normal((1000, 16))  # both along the same axis
    res2 = pairwise_angles({"a": probe_directions(Xa, a, k=3, permutations=2),
                            "b": probe_directions(Xb, b, k=3, permutations=2)})
    assert res2["pairs"]["a|b"]["principal"][0] < 15
    assert set(res2["split_half"]) == {"a", "b"}


def test_sweep_directions_use_within_base_centering():
    """Base clips differ along a nuisance axis that is correlated with the factor's mean per base; centering
    within bases removes it, so the controlled direction is the planted one."""
    rng = np.random.default_rng(0)
    D, bases, points = 30, 12, 8
    u, nuisance = np.linalg.qr(rng.standard_normal((D, 2)))[0].T
    offsets = rng.standard_normal(bases) * 5
    groups = np.repeat(np.arange(bases), points)
    y = np.tile(np.linspace(-1, 1, points), bases) + offsets[groups] * 0.3
    X = np.outer(y - offsets[groups] * 0.3, u) * 2 + np.outer(offsets[groups], nuisance) * 3
    X = X + 0.05 * rng.standard_normal(X.shape)
    centered = probe_directions(X, y, groups, center_groups=True, permutations=0)
    assert angle_deg(centered.decode, u) < 5
    assert angle_deg(centered.encode, u) < 5
    raw = probe_directions(X, y, groups, center_groups=False, permutations=0)
    assert angle_deg(raw.encode, u) > 20  # the pooled pattern mixes in the nuisance axis


# ----------------------------------------------------------------------------- MI
def test_mi_ranks_the_planted_unit_highest():
    rng = np.random.default_rng(0)
    n, D = 300, 20
    X = rng.standard_normal((n, D))
    y = rng.standard_normal(n)
    labels = rng.integers(0, 3, n)
    X[:, 7] = y + 0.1 * rng.standard_normal(n)
    X[:, 12] = labels + 0.2 * rng.standard_normal(n)
    res = mutual_information(X, {"y": (y, "continuous"), "label": (labels, "categorical")}, seed=0)
    M = np.array(res["mi"])
    assert M.shape == (D, 2)
    assert int(np.argmax(M[:, 0])) == 7 and int(np.argmax(M[:, 1])) == 12
    assert res["per_factor"]["y"]["gap_relative"] > 0.5
    conc = np.array([c if c is not None else np.nan for c in res["concentration"]])
    assert conc[7] > 0.5 and conc[12] > 0.5  # one factor each
    assert np.isnan(conc[0])  # a unit with no information has no concentration
    assert res["concentration_weighted"] > 0.5
    # a subset of units keeps the unit ids
    sub = mutual_information(X, {"y": (y, "continuous")}, max_units=5, seed=1)
    assert len(sub["units"]) == 5 and np.array(sub["mi"]).shape == (5, 1)


# ----------------------------------------------------------------------------- transfer
def test_transfer_probe_recovers_a_shared_direction():
    rng = np.random.default_rng(0)
    D = 24
    u = rng.standard_normal(D)
    y_syn, y_real = rng.uniform(6, 10, 300), rng.uniform(6.5, 8, 80)
    X_syn = np.outer(y_syn, u) + rng.standard_normal((300, D)) * 0.3
    X_real = np.outer(y_real, u) + rng.standard_normal((80, D)) * 0.3
    res = transfer_probe(X_syn, y_syn, None, X_real, y_real, {"clip": np.arange(80), "speaker": np.arange(80) % 4})
    assert res["transfer_r2"] > 0.8 and res["transfer_corr"] > 0.9
    assert res["real_cv_r2_clip"] > 0.7 and "real_cv_r2_speaker" in res
    off = transfer_probe(X_syn, y_syn, None, X_real + 5 * u, y_real)  # shifted domain: r survives, R^2 does not
    assert off["transfer_corr"] > 0.9 and off["transfer_r2"] < res["transfer_r2"] - 0.5


# ----------------------------------------------------------------------------- all layers
def test_analyze_layers_on_planted_probe_sets():
    rng = np.random.default_rng(0)
    D = 32
    basis = np.linalg.qr(rng.standard_normal((D, D)))[0]
    n = 200
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    cat = rng.integers(0, 2, n)

    def emb(fa, fb, c):
        X1 = 3 * np.outer(fa, basis[:, 0]) + 3 * np.outer(fb, basis[:, 1]) + 6 * np.outer(c, basis[:, 2])
        X1 = X1 + rng.standard_normal(X1.shape)
        return np.stack([X1, rng.standard_normal(X1.shape)], 1)  # layer 2 knows nothing

    def probe(name, targets, groups, varied=None):
        kinds = {"a": "continuous", "b": "continuous", "cat": "categorical"}
        return SimpleNamespace(name=name, targets=targets, groups=groups, varied=varied,
                               kind=lambda t: kinds[t],
                               valid=lambda t, tg=targets: tg[t] >= 0 if kinds[t] == "categorical" else np.isfinite(tg[t]))

    g = np.repeat(np.arange(10), 6)
    sa, sb = np.tile(np.linspace(-1.5, 1.5, 6), 10), np.tile(np.linspace(-1.5, 1.5, 6), 10)
    base_b, base_a = rng.standard_normal(10)[g], rng.standard_normal(10)[g]
    sets = [probe("random", {"a": a, "b": b, "cat": cat}, np.arange(n)),
            probe("sweep_a", {"a": sa}, g, "a"), probe("sweep_b", {"b": sb}, g, "b")]
    embeddings = {"random": emb(a, b, cat), "sweep_a": emb(sa, base_b, np.zeros(60)), "sweep_b": emb(base_a, sb, np.zeros(60))}
    res = analyze_layers(embeddings, sets, analysis_layer=0, folds=4, permutations=5, k=2, mi_units=8)
    dec = res["decoding"]
    assert dec["random"]["a"]["r2"][0] > 0.85 and dec["random"]["a"]["r2"][1] < 0.1
    assert abs(dec["random"]["a"]["r2_shuffled"]) < 0.1
    assert dec["sweep_b"]["b"]["r2"][0] > 0.85
    assert dec["random"]["cat"]["accuracy"][0] > 0.95 and dec["random"]["cat"]["chance"] < 0.6
    ctrl = res["angles"]["controlled"][0]
    assert ctrl["factors"] == ["a", "b"] and abs(ctrl["pairs"]["a|b"]["decode"] - 90) < 10
    assert abs(res["angles"]["joint"][0]["pairs"]["a|b"]["decode"] - 90) < 10
    assert res["chance"]["random_direction"]["dim"] == D
    assert len(res["mi"]["units"]) == 8
    json.dumps(res)  # plain numbers only


# ----------------------------------------------------------------------------- end to end
def _tiny_checkpoint(path):
    import torch

    from audiopg.audio.fbank import FbankConfig
    from audiopg.core.config import to_dict
    from audiopg.model import ModelConfig, ViTEncoder
    from audiopg.model.checkpoint import save_encoder
    from audiopg.synth import load_world_config

    cfg = ModelConfig(num_frames=48, num_mel_bins=32, embed_dim=32, depth=2, num_heads=2,
                      decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    torch.manual_seed(123)  # not the baseline's seed: the two models must differ
    world = load_world_config("paper", ["seconds=0.48", "events.min_seconds=0.2"])
    save_encoder(path / "encoder.safetensors", ViTEncoder(cfg).state_dict(),
                 {"model": to_dict(cfg), "fbank": to_dict(FbankConfig(num_mel_bins=32)),
                  "fbank_stats": {"mean": -6.0, "std": 4.0}, "world": world.to_dict()})


def _fake_fsdd(root, n=14):
    import soundfile as sf

    rng = np.random.default_rng(0)
    sr = 8000
    t = np.arange(int(0.5 * sr)) / sr
    for i in range(n):
        f0 = rng.uniform(90, 240)
        x = sum(k ** -1.0 * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) for k in range(1, 10) if f0 * k < 3800)
        sf.write(root / f"{i % 10}_spk{i % 2}_{i}.wav", (0.2 * x).astype(np.float32), sr)


def test_analyze_cli_end_to_end(tmp_path, capsys):
    from audiopg.cli.main import main

    ckpt, fsdd, out = tmp_path / "run", tmp_path / "fsdd", tmp_path / "analysis"
    fsdd.mkdir()
    _tiny_checkpoint(ckpt)
    _fake_fsdd(fsdd)
    t0 = time.time()
    rc = main(["analyze", "--checkpoint", str(ckpt), "--out", str(out), "--clips", "40", "--bases", "2",
               "--points", "3", "--f0-points", "3", "--folds", "2", "--permutations", "2", "--mi-units", "8",
               "--fsdd", str(fsdd), "--real-clips", "12"])
    elapsed = time.time() - t0
    assert rc == 0
    report = (out / "report.md").read_text()
    doc = json.loads((out / "analysis.json").read_text())
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"decoding_per_layer.png", "angles.png", "pca.png", "f0_trajectory.png", "patch_filters.png",
            "mi_heatmap.png", "real_f0_transfer.png"} <= set(pngs)
    for name in pngs:
        assert f"({name})" in report  # linked
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(doc["models"]) == {"trained", "random_init"}
    r2 = [m["decoding"]["random"]["snr_db"]["r2"] for m in doc["models"].values()]
    assert r2[0] != r2[1]  # a different network
    for m in doc["models"].values():
        assert m["layers"] == 2 and m["dim"] == 32
        assert len(m["decoding"]["random"]["log2_f0"]["r2"]) == 2
        assert m["angles"]["controlled"][1]["pairs"]["log2_f0|event_level_db"]["decode"] is not None
        assert len(m["real_audio"]["per_layer"]) == 2
    assert doc["real_audio"]["segments"] == 12
    assert "f0 vs event level" in report and "Chance levels" in report and "random init" in report
    assert elapsed < 120, elapsed  # ~8 s on 2 idle cores; generous for a loaded machine
    # no baseline, no real audio
    rc = main(["analyze", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), "--clips", "24", "--bases", "2",
               "--points", "3", "--f0-points", "3", "--folds", "2", "--permutations", "0", "--mi-units", "4",
               "--no-baseline", "--no-real"])
    assert rc == 0
    doc = json.loads((tmp_path / "b" / "analysis.json").read_text())
    assert list(doc["models"]) == ["trained"] and doc["real_audio"] == {"skipped": "--no-real"}
    assert "Skipped: --no-real" in (tmp_path / "b" / "report.md").read_text()


def test_analyze_cli_bad_input(tmp_path, capsys):
    from audiopg.cli.main import main

    assert main(["analyze", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    _tiny_checkpoint(tmp_path)
    assert main(["analyze", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), "--clips", "3"]) == 2
    assert "clips" in capsys.readouterr().err
    assert main(["analyze", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), "--fsdd",
                 str(tmp_path / "nope")]) == 2


def test_patch_filters_figure_draws_oblong_filters_whole(tmp_path, monkeypatch):
    """8-frame x 32-bin filters become 32-high, 8-wide tiles (mel upwards, time to the right)."""
    from audiopg.analysis import plots

    shown = []
    axes_cls = plots._plt().Axes
    real_imshow = axes_cls.imshow

    def recording_imshow(ax, img, **kw):
        shown.append(img)
        return real_imshow(ax, img, **kw)

    monkeypatch.setattr(axes_cls, "imshow", recording_imshow)
    weights = np.random.default_rng(0).standard_normal((6, 1, 8, 32)).astype(np.float32)
    plots.plot_patch_filters({"trained": weights}, tmp_path / "filters.png", count=4)
    assert (tmp_path / "filters.png").stat().st_size > 0
    canvas = shown[0]
    assert canvas.shape == (2 * 33 - 1, 2 * 9 - 1)  # 2 x 2 tiles of 32 x 8 with one-pixel gaps
    assert np.isnan(canvas[32]).all() and np.isnan(canvas[:, 8]).all()
