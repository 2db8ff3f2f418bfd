"""Tests for audiopg.audio.io: reading files, resampling, fitting lengths with a noise floor."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from audiopg.audio.io import (
    PAD_NOISE_LEVEL,
    fit_length,
    load_audio,
    noise_floor,
    resample,
)
from audiopg.core.errors import AudioFileError


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


# ----------------------------------------------------------------------------- load_audio
def test_wav_at_target_rate_round_trips(tmp_path):
    x = sine(440, 16000, 0.5)
    path = tmp_path / "a.wav"
    sf.write(path, x, 16000, subtype="PCM_16")
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1.0 / 32768 + 1e-6)


def test_stereo_44k_is_mixed_to_mono_and_resampled(tmp_path):
    left, right = sine(1000, 44100, 1.0, 0.8), sine(1000, 44100, 1.0, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    y = load_audio(path, 16000)
    assert y.ndim == 1 and abs(len(y) - 16000) <= 1
    assert peak_hz(y, 16000) == pytest.approx(1000, abs=2)
    # mean of the channels: amplitude (0.8 + 0.2) / 2 = 0.5, away from the resampler's edges
    assert np.abs(y[2000:-2000]).max() == pytest.approx(0.5, abs=0.01)
    expected = sine(1000, 16000, 1.0, 0.5)
    np.testing.assert_allclose(y[2000:-2000], expected[2000:-2000], atol=2e-3)


def test_8k_file_is_upsampled_to_16k(tmp_path):
    path = tmp_path / "phone.wav"
    sf.write(path, sine(300, 8000, 0.5), 8000)
    y = load_audio(path, 16000)
    assert len(y) == 8000
    assert peak_hz(y, 16000) == pytest.approx(300, abs=3)
    assert load_audio(path, 8000).shape == (4000,)


@pytest.mark.parametrize("ext, fmt, subtype", [
    ("flac", "FLAC", None), ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III"),
])
def test_compressed_formats(tmp_path, ext, fmt, subtype):
    path = tmp_path / f"clip.{ext}"
    try:
        sf.write(path, sine(500, 16000, 1.0), 16000, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError) as err:  # pragma: no cover - depends on libsndfile build
        pytest.skip(f"this libsndfile cannot write {fmt}: {err}")
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and abs(len(y) - 16000) < 2000  # codecs may add a little padding
    assert peak_hz(y, 16000) == pytest.approx(500, abs=5)


def test_corrupt_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioFileError) as err:
        load_audio(path)
    assert str(path) in str(err.value) and "not a readable audio file" in str(err.value)


def test_wav_with_zero_frames_raises(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioFileError) as err:
        load_audio(path)
    assert str(path) in str(err.value) and "0 samples" in str(err.value)


def test_zero_byte_missing_and_folder_paths_raise(tmp_path):
    empty = tmp_path / "nothing.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioFileError, match="empty"):
        load_audio(empty)
    with pytest.raises(AudioFileError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioFileError, match="folder"):
        load_audio(tmp_path)


def test_nan_and_inf_samples_raise(tmp_path):
    x = sine(440, 16000, 0.1)
    x[10], x[20] = np.nan, np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioFileError) as err:
        load_audio(path)
    assert str(path) in str(err.value) and "NaN" in str(err.value) and "2" in str(err.value)


def test_one_sample_file_too_short_to_resample_raises(tmp_path):
    path = tmp_path / "one.wav"
    sf.write(path, np.array([0.5], np.float32), 44100)
    with pytest.raises(AudioFileError, match="too short"):
        load_audio(path, 16000)


# ----------------------------------------------------------------------------- resample
def test_resample_batch_rows_match_single_rows_and_preserve_frequency():
    rng = np.random.default_rng(1)
    batch = np.stack([sine(700, 44100, 0.3), rng.standard_normal(13230).astype(np.float32) * 0.1])
    out = resample(batch, 44100, 16000)
    assert out.shape == (2, resample(batch[0], 44100, 16000).shape[0]) and out.dtype == np.float32
    for i in range(2):
        np.testing.assert_allclose(out[i], resample(batch[i], 44100, 16000), atol=1e-6)
    assert peak_hz(out[0], 16000) == pytest.approx(700, abs=5)


def test_resample_same_rate_is_a_copy_and_bad_args_raise():
    x = sine(100, 16000, 0.01)
    y = resample(x, 16000, 16000)
    np.testing.assert_array_equal(x, y)
    y[0] = 5.0
    assert x[0] != 5.0
    with pytest.raises(ValueError):
        resample(x, 0, 16000)
    with pytest.raises(ValueError):
        resample(x, 16000, 8000, quality="LQ")


def test_resample_is_high_quality():
    # a 7 kHz tone survives 44.1k -> 16k nearly untouched (close to the 8 kHz Nyquist; soxr MQ errs ~6e-3)
    y = resample(sine(7000, 44100, 0.5), 44100, 16000)
    ref = sine(7000, 16000, 0.5)
    err = np.sqrt(np.mean((y[800:-800] - ref[800:-800]) ** 2)) / np.sqrt(np.mean(ref**2))
    assert err < 2e-3
    # and a tone above the new Nyquist is removed, not aliased to 7.4 kHz
    alias = resample(sine(8600, 44100, 0.5), 44100, 16000)
    assert np.sqrt(np.mean(alias[800:-800] ** 2)) < 1e-4


# ----------------------------------------------------------------------------- fit_length
def test_pad_uses_a_seeded_noise_floor_not_zeros():
    x = sine(440, 16000, 0.1)
    y = fit_length(x, 4000)
    assert y.shape == (4000,)
    np.testing.assert_array_equal(y[:1600], x)
    pad = y[1600:]
    assert np.count_nonzero(pad) == len(pad)
    assert pad.std() == pytest.approx(PAD_NOISE_LEVEL, rel=0.1)
    np.testing.assert_array_equal(y, fit_length(x, 4000))  # reproducible
    assert not np.array_equal(pad, fit_length(x, 4000, seed=1)[1600:])
    np.testing.assert_array_equal(pad, noise_floor(2400))
    assert not fit_length(x, 4000, noise_level=0.0)[1600:].any()


def test_pad_is_the_same_for_every_row_of_a_batch():
    x = np.stack([sine(440, 16000, 0.1), sine(880, 16000, 0.1)])
    y = fit_length(x, 2000)
    assert y.shape == (2, 2000)
    np.testing.assert_array_equal(y[0], fit_length(x[0], 2000))
    np.testing.assert_array_equal(y[1], fit_length(x[1], 2000))


def test_crop_and_repeat():
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(x, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(fit_length(x, 4, crop="center"), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_length(x[:3], 7, mode="repeat"), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(fit_length(x, 10), x)


def test_fit_length_keeps_torch_type_device_and_dtype():
    x = torch.ones(2, 5, dtype=torch.float64)
    y = fit_length(x, 8)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64 and y.shape == (2, 8)
    assert torch.equal(y[:, :5], x)
    np.testing.assert_allclose(y[0, 5:].numpy(), noise_floor(3), rtol=1e-6)
    r = fit_length(torch.tensor([1.0, 2.0]), 5, mode="repeat")
    assert r.tolist() == [1.0, 2.0, 1.0, 2.0, 1.0]


def test_fit_length_rejects_bad_arguments():
    with pytest.raises(ValueError):
        fit_length(np.zeros(0, np.float32), 10)
    with pytest.raises(ValueError):
        fit_length(np.zeros(5, np.float32), 0)
    with pytest.raises(ValueError):
        fit_length(np.zeros(5, np.float32), 10, mode="zeros")
    with pytest.raises(ValueError):
        noise_floor(5, level=-1.0)


def test_audio_module_is_light():
    # reading audio must not need the encoder stack
    import subprocess
    import sys

    code = "import sys, audiopg, audiopg.audio.io; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True)
    assert out.stdout.strip() == "False"
