"""YIN pitch tracker: accuracy on synthetic tones and harmonic complexes, voicing, stable segments."""
import numpy as np
import pytest

from audiopg.analysis.pitch import (
    cumulative_mean_normalized_difference,
    difference_function,
    stable_segments,
    voiced_clips,
    yin,
)

SR = 16000


def _tone(f0, seconds=0.4, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return np.sin(2 * np.pi * f0 * t + 0.3)


def _complex(f0, seconds=0.4, sr=SR, first=1, last=12, slope=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for k in range(first, last + 1):
        if f0 * k < sr / 2:
            x += k ** -slope * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
    return x


@pytest.mark.parametrize("f0", [55.0, 98.0, 147.3, 220.0, 401.7, 733.0, 990.0])
def test_pure_tones_within_1_percent(f0):
    track = yin(_tone(f0), SR, fmin=50, fmax=1000)
    assert track.voiced.mean() > 0.95
    est = track.f0[track.voiced]
    assert np.all(np.abs(est / f0 - 1) < 0.01), (f0, est.min(), est.max())


@pytest.mark.parametrize("f0", [60.0, 110.0, 185.0, 330.0, 620.0])
@pytest.mark.parametrize("first", [1, 2])  # 2 = missing fundamental
def test_harmonic_complexes_within_1_percent(f0, first):
    track = yin(_complex(f0, first=first, seed=int(f0)), SR, fmin=50, fmax=1000)
    assert track.voiced.mean() > 0.95
    est = track.f0[track.voiced]
    assert np.all(np.abs(est / f0 - 1) < 0.01), (f0, first, est.min(), est.max())


def test_other_sample_rate_and_interpolation_beats_integer_lags():
    sr, f0 = 8000, 187.3  # period 42.71 samples: an integer lag alone would be off by up to ~1.2 %
    track = yin(_complex(f0, sr=sr), sr, fmin=60, fmax=500)
    est = np.nanmedian(track.f0)
    assert abs(est / f0 - 1) < 0.002


def test_difference_function_matches_direct_sum():
    rng = np.random.default_rng(1)
    W, T = 64, 40
    frames = rng.standard_normal((3, W + T))
    d = difference_function(frames, W, T)
    for i in range(3):
        for tau in (0, 1, 7, 40):
            direct = np.sum((frames[i, :W] - frames[i, tau:tau + W]) ** 2)
            assert d[i, tau] == pytest.approx(direct, rel=1e-9, abs=1e-9)
    dn = cumulative_mean_normalized_difference(d)
    assert np.all(dn[:, 0] == 1.0)
    tau = 5
    assert dn[0, tau] == pytest.approx(d[0, tau] * tau / d[0, 1:tau + 1].sum())


def test_noise_and_silence_are_unvoiced():
    rng = np.random.default_rng(2)
    assert yin(rng.standard_normal(SR // 2), SR).voiced.mean() < 0.1
    x = np.concatenate([_tone(200.0, 0.3), np.zeros(int(0.3 * SR))])
    track = yin(x, SR)
    t = track.times
    assert track.voiced[t < 0.25].mean() > 0.9
    assert track.voiced[t > 0.35].mean() == 0.0  # below the energy gate


def test_stable_segments_split_at_a_pitch_jump():
    x = np.concatenate([_complex(150.0, 0.6), _complex(300.0, 0.6)])  # an octave jump at 0.6 s
    track = yin(x, SR, fmin=60, fmax=500)
    segs = stable_segments(track, len(x), seconds=0.5, min_seconds=0.3, max_semitones=1.0)
    assert len(segs) >= 2
    for s in segs:
        assert (s.stop - s.start) / SR <= 0.5 + 1e-9
        assert s.spread_semitones <= 1.0
        expected = 150.0 if s.stop <= 0.6 * SR + track.frame_length else 300.0
        assert abs(s.f0 / expected - 1) < 0.01
    assert {round(s.f0 / 150.0) for s in segs} == {1, 2}
    # a gliding tone (2 semitones over 0.5 s) has no stable 0.5 s stretch at 0.5 semitone tolerance
    t = np.arange(int(0.5 * SR)) / SR
    glide = np.sin(2 * np.pi * np.cumsum(200.0 * 2 ** (2 * t / 0.5 / 12)) / SR)
    assert not stable_segments(yin(glide, SR), len(glide), seconds=0.5, max_semitones=0.5)


def test_voiced_clips_reads_files(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "a.wav", (0.3 * _complex(120.0, 0.7, sr=8000)).astype(np.float32), 8000)
    sf.write(tmp_path / "b.wav", (0.1 * np.random.default_rng(0).standard_normal(4000)).astype(np.float32), 8000)
    (tmp_path / "c.wav").write_bytes(b"not audio")
    clips, counts = voiced_clips(sorted(tmp_path.glob("*.wav")), 16000)
    assert counts == {"files": 3, "unreadable": 1, "no_segment": 1}
    assert len(clips) == 1 and clips[0].sample_rate == 16000
    assert abs(clips[0].f0 / 120.0 - 1) < 0.01
    assert 0.2 <= len(clips[0].audio) / 16000 <= 0.5 + 1e-9
