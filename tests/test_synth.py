"""The procedural world: determinism, factors measured back from the audio, configs."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from audiopg.core.errors import ConfigError
from audiopg.synth import SOURCES, Source, World, load_world_config, register_source
from audiopg.synth.render import butterworth2_response, place_partials
from audiopg.synth.rng import Randomness
from audiopg.synth.sources.basic import PULSE_SHAPES, bessel_j

SR = 16000


def world(*overrides, seconds=3.0):
    return World(load_world_config("paper", [f"seconds={seconds}", *overrides]))


# Everything but the source switched off, one long event: the audio is the enveloped source.
PLAIN = ("transient.enabled=false", "lowpass.enabled=false", "background.enabled=false")


def spectrum_peaks(x: np.ndarray, rel_db: float = -30.0) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (Hz, parabolic interpolation) and levels (dB) of local spectral maxima."""
    win = np.hanning(len(x))
    mag = np.abs(np.fft.rfft(x * win))
    db = 20 * np.log10(mag + 1e-12)
    top = db.max()
    idx = np.where((db[1:-1] > db[:-2]) & (db[1:-1] >= db[2:]) & (db[1:-1] > top + rel_db))[0] + 1
    a, b, c = db[idx - 1], db[idx], db[idx + 1]
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (idx + offset) * SR / len(x), b


# ----------------------------------------------------------------------------- basics
def test_shapes_finite_peak_and_determinism():
    w = world(seconds=2.0)
    a = w.sample(12, 7)
    b = w.sample(12, 7)
    c = w.sample(12, 8)
    assert a.audio.shape == (12, 32000) and a.audio.dtype == torch.float32
    assert torch.isfinite(a.audio).all()
    assert a.audio.abs().amax(1).allclose(torch.ones(12))  # peak-normalized
    assert torch.equal(a.audio, b.audio)
    for k in a.factors:
        assert torch.equal(a.factors[k].nan_to_num(-7), b.factors[k].nan_to_num(-7)), k
    assert not torch.equal(a.audio, c.audio)
    assert a.factors["source"].shape == (12,) and a.factors["event_onset"].shape == (12, 5)


def test_paper_ranges_hold_over_many_clips():
    w = world(seconds=2.56)
    f = w.sample(256, 3).factors
    src = f["source"]
    names = w.config.source_names
    assert set(src.tolist()) == set(range(4)), "all four source types occur"
    f0 = f["f0"][src != names.index("noise")]
    assert f0.min() >= 50 and f0.max() <= 2000 and not torch.isnan(f0).any()
    assert torch.isnan(f["f0"][src == names.index("noise")]).all()
    harm = src == names.index("harmonic")
    assert f["partials"][harm].min() >= 3 and f["partials"][harm].max() <= 15
    assert f["gamma"][harm].min() >= 0.5 and f["gamma"][harm].max() <= 1.5
    fm = src == names.index("fm")
    assert set(np.round(f["fm_ratio"][fm].double().numpy(), 4).tolist()) <= {0.5, 1.0, 1.5, 2.0, 2.5, 3.14}
    assert f["fm_index"][fm].min() >= 0.5 and f["fm_index"][fm].max() <= 8
    assert f["event_count"].min() == 1 and f["event_count"].max() == 5
    count = f["event_count"]
    dur = f["event_duration"]
    active = ~torch.isnan(dur)
    assert torch.equal(active.sum(1), count)
    assert dur[active].min() >= 0.5 - 1e-3
    assert (dur.nan_to_num(0).amax(1) <= torch.clamp(2.56 / count, min=0.5) + 1e-3).all()
    assert (f["event_onset"] + dur).nan_to_num(0).max() <= 2.56 + 1e-6
    assert f["event_level_db"].nan_to_num(-99).amax(1).eq(0).all(), "loudest event is the 0 dB reference"
    frac = f["transient"].sum() / active.sum()
    assert 0.5 < frac < 0.7
    has_cut = ~torch.isnan(f["cutoff"])
    assert 0.6 < has_cut.float().mean() < 0.8
    assert f["cutoff"][has_cut].min() >= 200 and f["cutoff"][has_cut].max() <= 6000
    assert f["noise_level"].min() >= 0.001 and f["noise_level"].max() <= 0.02


def test_records_are_json_and_trimmed():
    w = world(seconds=1.0)
    batch = w.sample(6, 1)
    recs = batch.records()
    assert len(recs) == 6
    for rec, count in zip(recs, batch.factors["event_count"].tolist()):
        json.dumps(rec, allow_nan=False)
        assert len(rec["event_onset"]) == count
        if rec["source"] == "noise":
            assert "f0" not in rec and rec["noise_colour"] in ("white", "pink", "brown")
        else:
            assert rec["f0"] > 0
        if rec["source"] == "harmonic":
            assert len(rec["partial_gain"]) == rec["partials"]


# ----------------------------------------------------------------------------- f0 of every source
@pytest.mark.parametrize("source", ["harmonic", "fm", "pulse"])
def test_f0_measured_from_audio(source):
    w = world(*PLAIN, "events.count=[1,1]", "events.min_seconds=2.9")
    f0 = torch.tensor([61.0, 155.5, 440.0, 987.3, 1733.0, 1999.0])
    fixed = {"source": source, "f0": f0}
    if source == "fm":
        fixed.update(fm_index=0.5, fm_ratio=3.14)  # J0(0.5) > J1(0.5), no folded sideband on the carrier
    batch = w.sample(len(f0), 11, fixed=fixed)
    for x, f in zip(batch.audio.numpy(), f0.tolist()):
        freqs, levels = spectrum_peaks(x, rel_db=-20)
        measured = freqs.min() if source == "harmonic" else freqs[np.argmax(levels)]
        assert measured == pytest.approx(f, rel=0.02), (source, f, measured)


def test_fm_spectrum_lies_on_the_carrier_modulator_grid():
    w = world(*PLAIN, "events.count=[1,1]", "events.min_seconds=2.9")
    batch = w.sample(8, 5, fixed={"source": "fm", "f0": 300.0})
    for x, ratio in zip(batch.audio.numpy(), batch.factors["fm_ratio"].tolist()):
        freqs, _ = spectrum_peaks(x, rel_db=-25)
        fm = 300.0 * ratio
        n = np.round((freqs - 300.0) / fm)
        lines = np.abs(300.0 + n * fm)
        n_neg = np.round((-freqs - 300.0) / fm)  # negative-frequency sidebands fold back
        lines_neg = np.abs(300.0 + n_neg * fm)
        err = np.minimum(np.abs(freqs - lines), np.abs(freqs - lines_neg))
        assert err.max() < 0.02 * 300, (ratio, freqs[err.argmax()])


def test_noise_colours_have_their_slopes():
    w = world(*PLAIN, "events.count=[1,1]", "events.min_seconds=2.9", seconds=3.0)
    slopes = []
    for colour in ("white", "pink", "brown"):
        x = w.sample(4, 2, fixed={"source": "noise", "noise_colour": colour}).audio.numpy()
        psd = (np.abs(np.fft.rfft(x, axis=1)) ** 2).mean(0)
        f = np.fft.rfftfreq(x.shape[1], 1 / SR)
        band = (f > 200) & (f < 6000)
        slopes.append(np.polyfit(np.log2(f[band]), 10 * np.log10(psd[band]), 1)[0])
    assert slopes[0] == pytest.approx(0, abs=0.5)
    assert slopes[1] == pytest.approx(-3, abs=0.5)
    assert slopes[2] == pytest.approx(-6, abs=0.5)


# ----------------------------------------------------------------------------- band-limited pulses
@pytest.mark.parametrize("shape", PULSE_SHAPES)
def test_pulses_are_band_limited(shape):
    n = SR  # one second
    f0 = 1234.5
    src = SOURCES["pulse"]
    cfg = load_world_config("paper").sources["pulse"]
    factors = {"f0": torch.tensor([f0]), "pulse_shape": torch.tensor([PULSE_SHAPES.index(shape)]),
               "pulse_phase": torch.tensor([0.3])}
    spec = torch.zeros(1, n // 2 + 1, dtype=torch.complex64)
    place_partials(spec, torch.tensor([0]), src.render(cfg, factors, n, SR, None), n, SR)
    ours = torch.fft.irfft(spec, n=n)[0].double().numpy()
    t = np.arange(n) / SR
    ph = (f0 * t + 0.3 / (2 * math.pi)) % 1.0
    naive = {"sawtooth": 2 * ph - 1, "square": np.where(ph < 0.5, 1.0, -1.0),
             "triangle": 1 - 4 * np.abs(ph - 0.5)}[shape]

    def aliased_db(x):
        x = x / np.sqrt(np.mean(x**2))
        p = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(n, 1 / SR)
        k = np.round(f / f0)
        harmonic = (np.abs(f - k * f0) <= 3.0) & (k >= 1)
        return 10 * np.log10(p[~harmonic].sum() + 1e-30)

    assert aliased_db(naive) - aliased_db(ours) >= 40, shape


# ----------------------------------------------------------------------------- low-pass
def test_butterworth_response_matches_scipy_design():
    signal = pytest.importorskip("scipy.signal")
    for fc in (200.0, 1000.0, 6000.0):
        b, a = signal.butter(2, fc, fs=SR)
        w, h = signal.freqz(b, a, worN=np.fft.rfftfreq(1024, 1 / SR), fs=SR)
        ours = butterworth2_response(torch.tensor([fc]), 1024, SR)[0].numpy()
        assert np.abs(ours - h).max() < 1e-4


def test_lowpass_damps_above_twice_the_cutoff():
    w = world("transient.enabled=false", "background.enabled=false", seconds=2.0)
    fixed = {"source": "noise", "noise_colour": "white"}
    for fc in (300.0, 1000.0, 2500.0):
        dry = w.sample(4, 9, fixed={**fixed, "cutoff": math.nan}).audio.numpy()
        wet = w.sample(4, 9, fixed={**fixed, "cutoff": fc}).audio.numpy()
        f = np.fft.rfftfreq(dry.shape[1], 1 / SR)

        def high_over_low(x):
            p = np.abs(np.fft.rfft(x, axis=1)) ** 2
            return p[:, f > 2 * fc].sum() / p[:, f < fc / 2].sum()

        drop_db = 10 * np.log10(high_over_low(dry) / high_over_low(wet))
        assert drop_db >= 20, (fc, drop_db)


def test_lowpass_also_filters_transients():
    w = world("background.enabled=false", "transient.probability=1", seconds=2.0)
    fixed = {"source": "harmonic", "f0": 100.0, "partials": 3, "cutoff": 400.0}
    x = w.sample(2, 4, fixed=fixed).audio.numpy()
    f = np.fft.rfftfreq(x.shape[1], 1 / SR)
    p = np.abs(np.fft.rfft(x, axis=1)) ** 2
    # partials are at 100-300 Hz: everything above 3 kHz comes from the bursts, damped by >= 40 dB
    assert 10 * np.log10(p[:, f > 3000].sum() / p[:, (f > 50) & (f < 400)].sum()) < -40


# ----------------------------------------------------------------------------- envelopes and levels
def _hilbert_envelope(x):
    sig = pytest.importorskip("scipy.signal")
    return np.abs(sig.hilbert(x))


def test_envelope_onset_and_duration_measured_from_audio():
    w = world(*PLAIN, "events.count=[1,1]", "sources.harmonic.partials=[1,1]", "sources.harmonic.detune=0")
    batch = w.sample(6, 21, fixed={"source": "harmonic", "f0": 500.0})
    f = batch.factors
    t = np.arange(batch.audio.shape[1]) / SR
    for i, x in enumerate(batch.audio.numpy()):
        env = _hilbert_envelope(x)
        env = env / env.max()
        on, dur = f["event_onset"][i, 0].item(), f["event_duration"][i, 0].item()
        a, d = f["event_attack"][i, 0].item(), f["event_decay"][i, 0].item()
        s, r = f["event_sustain"][i, 0].item(), f["event_release"][i, 0].item()
        active = np.where(env > 1e-3)[0]
        assert t[active[0]] == pytest.approx(on, abs=0.003)
        assert t[active[-1]] - t[active[0]] == pytest.approx(dur, abs=0.006)
        u = (t - on) / dur
        adsr = np.where(u < a, u / a, np.where(u < a + d, 1 - (1 - s) * (u - a) / d,
                        np.where(u < 1 - r, s, s * (1 - u) / r)))
        adsr = np.where((u >= 0) & (u <= 1), adsr, 0.0)
        inner = (t > 0.05) & (t < t[-1] - 0.05)  # Hilbert edge effects at the clip ends
        assert np.abs(env - adsr)[inner].max() < 0.03


@pytest.mark.parametrize("source", ["harmonic", "noise", "pulse"])
def test_event_levels_measured_from_audio(source):
    w = world(*PLAIN, "events.count=[3,3]", "events.min_seconds=0.8", seconds=3.0)
    onsets = torch.tensor([[0.1, 1.1, 2.1]]).repeat(5, 1)
    batch = w.sample(5, 3, fixed={"source": source, "event_onset": onsets, "event_duration": 0.8})
    for x, levels in zip(batch.audio.numpy(), batch.factors["event_level_db"].numpy()):
        rms = [np.sqrt(np.mean(x[int(o * SR):int((o + 0.8) * SR)] ** 2)) for o in (0.1, 1.1, 2.1)]
        measured = 20 * np.log10(np.array(rms) / max(rms))
        assert np.abs(measured - levels).max() < 0.5, (measured, levels)


def test_signal_to_background_ratio_measured_from_audio_with_and_without_peak_normalization():
    for peak_norm in ("true", "false"):
        w = world("transient.enabled=false", "lowpass.enabled=false", f"peak_normalize={peak_norm}", seconds=2.0)
        noisy = w.sample(6, 13)
        clean = w.sample(6, 13, fixed={"noise_level": 0.0}).audio.double().numpy()
        for x, c, snr in zip(noisy.audio.double().numpy(), clean, noisy.factors["snr_db"].numpy()):
            alpha = np.dot(x, c) / np.dot(c, c)  # undo the differing peak normalizations
            noise = x - alpha * c
            measured = 10 * np.log10(np.mean((alpha * c) ** 2) / np.mean(noise**2))
            assert measured == pytest.approx(snr, abs=0.5)


def test_absolute_level_without_peak_normalization():
    w = world("background.enabled=false", "peak_normalize=false", "signal_peak_db=[-30,-6]", seconds=1.0)
    batch = w.sample(8, 0)
    peak_db = 20 * torch.log10(batch.audio.abs().amax(1))
    assert torch.allclose(peak_db, batch.factors["signal_peak_db"], atol=1e-3)
    rms_db = 10 * torch.log10(batch.audio.double().square().mean(1))
    assert torch.allclose(rms_db.float(), batch.factors["rms_db"], atol=1e-3)


def test_transient_bursts_have_their_length_and_level():
    w = world(*PLAIN[1:], "transient.enabled=true", "transient.probability=1", "events.count=[1,1]",
              "peak_normalize=false", seconds=2.0)
    fixed = {"source": "harmonic", "event_onset": 0.5, "event_duration": 1.0, "partials": 3, "f0": 100.0,
             "transient_seconds": 0.05, "transient_level": 1.0}
    with_burst = w.sample(3, 1, fixed=fixed).audio.double().numpy()
    without = w.sample(3, 1, fixed={**fixed, "transient": False}).audio.double().numpy()
    start, end = int(0.5 * SR), int(0.55 * SR)
    # the signal is scaled to its peak after the bursts: undo that scale on the part after the burst
    alpha = (with_burst[:, end:] * without[:, end:]).sum(1) / (without[:, end:] ** 2).sum(1)
    burst = with_burst - alpha[:, None] * without
    assert np.abs(burst[:, :start]).max() < 1e-5 and np.abs(burst[:, end:]).max() < 1e-5
    event_rms = np.sqrt(np.mean((alpha[:, None] * without[:, start:int(1.5 * SR)]) ** 2, axis=1))
    burst_rms = np.sqrt(np.mean(burst[:, start:end] ** 2, axis=1))
    assert np.allclose(20 * np.log10(burst_rms / event_rms), 0.0, atol=0.5)


# ----------------------------------------------------------------------------- fixing factors, sweeps
def test_fixed_factor_and_sweep():
    w = world(seconds=1.0)
    f0s = [100.0, 200.0, 400.0, 800.0]
    batch = w.sweep("f0", f0s, seed=3, fixed={"source": "harmonic"})
    f = batch.factors
    assert f["f0"].tolist() == f0s
    for key in ("event_onset", "event_duration", "gamma", "partials", "cutoff", "noise_level"):
        col = f[key].nan_to_num(-1.0)
        assert (col == col[0]).all(), key
    levels = f["event_level_db"].nan_to_num(-1.0)  # measured on each clip: equal up to the source's own ripple
    assert (levels - levels[0]).abs().max() < 0.5
    assert not torch.equal(batch.audio[0], batch.audio[1])
    with pytest.raises(KeyError, match="no_such_factor"):
        w.sample(2, 0, fixed={"no_such_factor": 1.0})
    with pytest.raises(ValueError, match="unknown source"):
        w.sample(2, 0, fixed={"source": "violin"})


def test_fixing_one_factor_leaves_the_others_drawn_the_same():
    w = world(seconds=1.0)
    a = w.sample(5, 4).factors
    b = w.sample(5, 4, fixed={"noise_level": 0.01}).factors
    assert torch.equal(a["event_onset"].nan_to_num(-1), b["event_onset"].nan_to_num(-1))
    assert (b["noise_level"] == 0.01).all()


def test_components_switch_off():
    w = world("sources.noise.enabled=false", "sources.fm.weight=0", "transient.enabled=false",
              "lowpass.enabled=false", seconds=1.0)
    f = w.sample(64, 0).factors
    names = w.config.source_names
    assert not torch.isin(f["source"], torch.tensor([names.index("noise"), names.index("fm")])).any()
    assert not f["transient"].any()
    assert torch.isnan(f["cutoff"]).all()


# ----------------------------------------------------------------------------- registry
def test_a_new_source_plugs_in_through_the_registry():
    @dataclasses.dataclass(frozen=True)
    class ClickConfig:
        enabled: bool = True
        weight: float = 1.0
        rate: tuple[float, float] = (5.0, 20.0)

    class Clicks(Source):
        name = "test_clicks"
        config_cls = ClickConfig
        factor_fill = {"click_rate": math.nan}

        def sample(self, cfg, n, rng):
            return {"click_rate": rng.uniform(n, *cfg.rate)}

        def render(self, cfg, factors, num_samples, sample_rate, rng):
            t = torch.arange(num_samples) / sample_rate
            return torch.sign(torch.sin(2 * math.pi * factors["click_rate"][:, None] * t))

    register_source(Clicks)
    try:
        cfg = load_world_config("paper", ["seconds=1.0", "sources={test_clicks: {rate: [8, 8]}}"])
        batch = World(cfg).sample(3, 0)
        assert batch.factors["click_rate"].eq(8).all()
        assert batch.records()[0]["source"] == "test_clicks"
    finally:
        SOURCES.pop("test_clicks")


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("override, key", [
    ("sources.harmonic.f0=[-5, 100]", "sources.harmonic.f0"),
    ("lowpass.cutoff=[3000, 200]", "lowpass.cutoff"),
    ("sources={violin: {}}", "sources.violin"),
    ("events.count=[0, 3]", "events.count"),
    ("transient.probability=1.5", "transient.probability"),
    ("sources.pulse.shapes=[sine]", "sources.pulse.shapes"),
    ("background.colour=pink", "background.colour"),
    ("sources.fm.index=fast", "sources.fm.index"),
])
def test_invalid_config_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_world_config("paper", [override])
    assert err.value.key.startswith(key), str(err.value)
    assert key in str(err.value)


def test_presets_load_from_yaml_and_json(tmp_path):
    cfg = load_world_config("paper")
    path = tmp_path / "w.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_world_config(path) == cfg
    yaml_path = tmp_path / "w.yaml"
    yaml_path.write_text("seconds: 1.5\nsources:\n  noise: {colours: [pink]}\n")
    small = load_world_config(yaml_path)
    assert small.seconds == 1.5 and list(small.sources) == ["noise"]
    with pytest.raises(ConfigError, match="unknown world preset"):
        load_world_config("nonexistent")


def test_randomness_shared_mode_repeats_one_draw():
    rng = Randomness(torch.Generator().manual_seed(0), shared=True)
    x = rng.uniform((4, 3))
    assert (x == x[0]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_shapes_and_determinism():
    w = World(load_world_config("paper", ["seconds=2.0"]), device="cuda")
    a, b = w.sample(8, 0), w.sample(8, 0)
    assert a.audio.is_cuda and torch.equal(a.audio, b.audio)


def test_bessel_functions_match_scipy():
    special = pytest.importorskip("scipy.special")
    x = torch.tensor([0.0, 1e-3, 0.5, 2.405, 5.0, 8.0, 20.0], dtype=torch.float64)
    ours = bessel_j(x, 20).numpy()
    ref = special.jv(np.arange(21)[None, :], x.numpy()[:, None])
    assert np.abs(ours - ref).max() < 1e-10


def test_fm_is_band_limited_and_matches_the_time_domain_formula():
    # low carrier: every sideband that matters is below Nyquist, so it equals the direct formula
    fixed = {"source": "fm", "f0": 220.0, "fm_ratio": 1.5, "fm_index": 3.0}
    x = World(load_world_config("paper", ["seconds=1.0", *PLAIN])).sample(1, 0, fixed=fixed)
    src = SOURCES["fm"]
    cfg = load_world_config("paper").sources["fm"]
    factors = {k: v for k, v in x.factors.items()}
    spec = torch.zeros(1, SR // 2 + 1, dtype=torch.complex64)
    place_partials(spec, torch.tensor([0]), src.render(cfg, factors, SR, SR, None), SR, SR)
    ours = torch.fft.irfft(spec, n=SR)[0].double().numpy()
    t = np.arange(SR) / SR
    pc, pm = factors["fm_phase"][0].tolist()
    direct = np.sin(2 * np.pi * 220 * t + pc + 3.0 * np.sin(2 * np.pi * 330 * t + pm))
    assert np.abs(ours - direct).max() < 1e-4
    # a high carrier with a large index: sidebands past Nyquist are dropped, not folded back
    factors = {"f0": torch.tensor([1900.0]), "fm_ratio": torch.tensor([3.14]), "fm_index": torch.tensor([8.0]),
               "fm_phase": torch.tensor([[0.1, 0.2]])}
    spec = torch.zeros(1, SR // 2 + 1, dtype=torch.complex64)
    place_partials(spec, torch.tensor([0]), src.render(cfg, factors, SR, SR, None), SR, SR)
    mag = spec[0].abs().numpy()
    lines = np.nonzero(mag > 1e-6 * mag.max())[0]  # 1 Hz bins
    fm = 5966.0  # 1900 * 3.14 on the 1 Hz grid
    n = np.round((lines - 1900.0) / fm)
    n_neg = np.round((-lines - 1900.0) / fm)
    err = np.minimum(np.abs(lines - np.abs(1900 + n * fm)), np.abs(lines - np.abs(1900 + n_neg * fm)))
    assert err.max() == 0, "every line is a true (possibly negative, folded) sideband"
    assert sorted(lines.tolist()) == [1900, 4066, 7866]  # n = 0, -1 (folded), +1; the rest lie past 8 kHz
