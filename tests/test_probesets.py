"""Probe sets: the random set varies everything, each sweep varies only its own factor."""
import numpy as np
import pytest

from audiopg.analysis.probesets import (
    SWEEPS,
    TARGETS,
    make_probe_sets,
    make_random_set,
    make_sweep,
    sweep_available,
    world_config_for_encoder,
)
from audiopg.synth import load_world_config

SECONDS = 0.64


@pytest.fixture(scope="module")
def cfg():
    return world_config_for_encoder(load_world_config("paper").to_dict(), SECONDS)


@pytest.fixture(scope="module")
def sets(cfg):
    probe_sets, skipped = make_probe_sets(cfg, clips=64, bases=3, points=4, f0_points=5, seed=3)
    assert skipped == {}
    return {s.name: s for s in probe_sets}


def test_world_for_encoder_takes_the_window_length(cfg):
    assert cfg.seconds == SECONDS
    assert cfg.events.min_seconds <= SECONDS
    short = world_config_for_encoder(None, 0.3)  # the preset's 0.5 s minimum event would not fit
    assert short.seconds == 0.3 and short.events.min_seconds <= 0.3


def test_random_set_targets(cfg, sets):
    s = sets["random"]
    assert len(s) == 64 and s.audio.shape == (64, int(round(SECONDS * cfg.sample_rate)))
    assert s.varied is None and len(np.unique(s.groups)) == 64
    names = cfg.source_names
    src = s.targets["source"]
    noise = src == names.index("noise")
    assert np.all(np.isnan(s.targets["log2_f0"][noise])) and np.all(np.isfinite(s.targets["log2_f0"][~noise]))
    np.testing.assert_allclose(2 ** s.targets["log2_f0"][~noise], s.factors["f0"][~noise], rtol=1e-5)
    assert np.all((s.targets["pulse_shape"] >= 0) == (src == names.index("pulse")))
    assert np.all((s.targets["noise_colour"] >= 0) == noise)
    assert np.all(np.isfinite(s.targets["fm_index"]) == (src == names.index("fm")))
    count = s.targets["event_count"]
    assert np.all(np.isfinite(s.targets["event_level_db"]) == (count >= 2))
    assert np.all(s.targets["event_level_db"][count >= 2] <= 0)
    assert "level_db" not in s.targets  # peak-normalized: no absolute level to decode
    for name, y in s.targets.items():  # every target varies
        m = s.valid(name)
        assert len(np.unique(y[m])) > 1, name


def _constant_within_bases(s, key):
    x = s.factors[key].reshape(len(s), -1).astype(np.float64)
    for g in np.unique(s.groups):
        block = x[s.groups == g]
        same = np.isclose(block, block[0], rtol=1e-5, atol=1e-6) | (np.isnan(block) & np.isnan(block[0]))
        if not same.all():
            return False
    return True


# world factors a sweep may change besides its own: the measured consequences of rendering
MEASURED = {"snr_db", "rms_db", "event_level_db"}
ALSO_CHANGES = {
    "f0": {"f0"},
    "event_level": {"event_level_db"},
    "snr": {"noise_level"},
    "level": {"signal_peak_db", "noise_level"},
    "fm_index": {"fm_index"},
    "cutoff": {"cutoff"},
}


@pytest.mark.parametrize("name", list(ALSO_CHANGES))
def test_sweep_varies_only_its_factor(sets, name):
    s = sets[f"sweep_{name}"]
    assert s.varied == SWEEPS[name]
    assert list(s.targets) == [s.varied]
    for key in s.factors:
        if key in ALSO_CHANGES[name] | MEASURED:
            continue
        assert _constant_within_bases(s, key), f"{name} sweep changes {key} within a base clip"
    y = s.targets[s.varied]
    for g in np.unique(s.groups):
        values = y[s.groups == g]
        assert len(np.unique(np.round(values, 3))) == len(values)  # every clip a different value
        assert np.all(np.diff(values) * np.sign(values[-1] - values[0]) > 0)  # monotone sweep
    # base clips differ from each other in their other factors
    assert not _constant_within_bases(type(s)(**{**s.__dict__, "groups": np.zeros(len(s), int)}), "event_onset")


def test_f0_sweep_cycles_tonal_sources_and_spans_50_to_2000(cfg, sets):
    s = sets["sweep_f0"]
    names = cfg.source_names
    per_base = [names[int(s.factors["source"][s.groups == g][0])] for g in np.unique(s.groups)]
    assert per_base == ["harmonic", "fm", "pulse"]
    f0 = 2 ** s.targets["log2_f0"]
    assert f0.min() == pytest.approx(50.0, rel=1e-3) and f0.max() == pytest.approx(2000.0, rel=1e-3)
    ratios = np.diff(np.log(f0[s.groups == 0]))
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)  # log-spaced


def test_event_level_sweep_sets_the_second_of_two_events(cfg, sets):
    s = sets["sweep_event_level"]
    assert np.all(s.factors["event_count"] == 2)
    target = np.tile(np.linspace(cfg.events.level_db[0], 0, 4), 3)
    np.testing.assert_allclose(s.targets["event_level_db"], target, atol=1.5)  # measured on the rendered events


def test_level_sweep_changes_absolute_level_at_fixed_snr(sets):
    s = sets["sweep_level"]
    assert s.normalize is False
    for g in np.unique(s.groups):
        m = s.groups == g
        level = s.targets["level_db"][m]
        peak = s.factors["signal_peak_db"][m]
        np.testing.assert_allclose(np.diff(level), np.diff(peak), atol=0.05)  # the whole clip scales
        assert np.ptp(s.factors["snr_db"][m]) < 0.05
        assert s.audio[m].abs().amax(1).min() < 0.1  # not peak-normalized: quiet clips stay quiet


def test_snr_and_count_and_source_sweeps(cfg, sets):
    s = sets["sweep_snr"]
    for g in np.unique(s.groups):
        snr = s.targets["snr_db"][s.groups == g]
        assert np.all(np.diff(snr) < 0)  # more noise, lower SNR
    s = sets["sweep_event_count"]
    assert sorted(np.unique(s.targets["event_count"])) == [1, 2, 3, 4, 5]
    for key in ("f0", "cutoff", "noise_level", "source"):
        assert _constant_within_bases(s, key)
    s = sets["sweep_source"]
    assert TARGETS["source"] == "categorical"
    for g in np.unique(s.groups):
        assert list(s.targets["source"][s.groups == g]) == [0, 1, 2, 3]
    for key in ("cutoff", "noise_level", "event_onset", "event_count"):
        assert _constant_within_bases(s, key)


def test_unavailable_sweeps_are_reported(cfg):
    no_fm = cfg.replace(sources={k: v for k, v in cfg.sources.items() if k != "fm"})
    assert sweep_available("fm_index", no_fm)
    with pytest.raises(ValueError, match="fm"):
        make_sweep("fm_index", no_fm, 2, 3, 0)
    sets, skipped = make_probe_sets(no_fm, clips=16, bases=2, points=3, f0_points=3, sweeps=("fm_index", "cutoff"))
    assert list(skipped) == ["fm_index"] and [s.name for s in sets] == ["random", "sweep_cutoff"]


def test_probe_sets_are_reproducible(cfg):
    a = make_random_set(cfg, 8, seed=5)
    b = make_random_set(cfg, 8, seed=5)
    assert np.array_equal(a.audio.numpy(), b.audio.numpy())
    c = make_sweep("cutoff", cfg, 2, 3, seed=5)
    d = make_sweep("cutoff", cfg, 2, 3, seed=5)
    assert np.array_equal(c.audio.numpy(), d.audio.numpy())
