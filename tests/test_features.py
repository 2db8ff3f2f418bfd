"""Tests for audiopg.audio.fbank: Kaldi parity (kaldi-native-fbank and a float64 numpy reference), shapes, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiopg.audio.fbank import (
    LOG_FLOOR,
    Fbank,
    FbankConfig,
    FbankStats,
    fbank,
    num_frames,
)
from audiopg.core.config import from_dict as config_from_dict
from audiopg.core.errors import ConfigError

knf = pytest.importorskip("kaldi_native_fbank")


# ----------------------------------------------------------------------------- test signals
def uniform_noise(sr: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(int(sr * seconds), generator=g) * 2 - 1


def sine_sweep(sr: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """Exponential sweep 50 Hz -> 0.45 sr over a -34 dB noise floor (no band numerically empty)."""
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    f0, f1 = 50.0, 0.45 * sr
    k = math.log(f1 / f0) / seconds
    phase = 2 * math.pi * f0 * (torch.exp(k * t) - 1) / k
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.sin(phase) + 1e-2 * torch.randn(t.shape, generator=g, dtype=torch.float64)).float()


def adsr_tone(sr: int, seconds: float, seed: int = 0, f0: float = 220.0) -> torch.Tensor:
    """Harmonic tone (1/k partials) under an attack-decay-sustain-release envelope, plus low noise."""
    n = int(sr * seconds)
    t = torch.arange(n, dtype=torch.float64) / sr
    tone = sum(torch.sin(2 * math.pi * f0 * h * t) / h for h in range(1, 7) if f0 * h < 0.5 * sr)
    attack, decay, sustain, release = 0.05, 0.1, 0.6, 0.2
    env = torch.ones(n, dtype=torch.float64) * sustain
    env = torch.where(t < attack + decay, 1 - (1 - sustain) * (t - attack) / decay, env)
    env = torch.where(t < attack, t / attack, env)
    env = torch.where(t > seconds - release, sustain * (seconds - t) / release, env)
    g = torch.Generator().manual_seed(seed)
    noise = 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
    return (0.3 * env * tone + noise).float()


SIGNALS = {"noise": uniform_noise, "sweep": sine_sweep, "adsr": adsr_tone}


def knf_fbank(x: torch.Tensor, sr: int, bins: int) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sr
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.snip_edges = True
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.round_to_power_of_two = True
    opts.mel_opts.num_bins = bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    online = knf.OnlineFbank(opts)
    online.accept_waveform(sr, x.numpy().astype(np.float32))  # same float numbers, no int16 scaling
    online.input_finished()
    return np.stack([np.asarray(online.get_frame(i)) for i in range(online.num_frames_ready)])


def numpy_reference(x: np.ndarray, sr: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 log-mel straight from the Kaldi formulas; returns (features, mel weights)."""
    win, shift = int(sr * 0.025), int(sr * 0.010)
    nfft = 1 << int(math.ceil(math.log2(win)))
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), win)[::shift]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1)))
    power = np.abs(np.fft.rfft(frames, n=nfft)) ** 2

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    lo, hi = mel(20.0), mel(sr / 2)
    delta = (hi - lo) / (bins + 1)
    fft_mel = mel(np.arange(nfft // 2) * sr / nfft)
    weights = np.zeros((bins, nfft // 2 + 1))
    for m in range(bins):
        left, center, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        rising = (fft_mel > left) & (fft_mel <= center)
        falling = (fft_mel > center) & (fft_mel < right)
        weights[m, : nfft // 2][rising] = (fft_mel[rising] - left) / (center - left)
        weights[m, : nfft // 2][falling] = (right - fft_mel[falling]) / (right - center)
    eps = np.finfo(np.float32).eps
    return np.log(np.maximum(power @ weights.T, eps)), weights


# ----------------------------------------------------------------------------- Kaldi parity
def assert_close_to_knf(ours: np.ndarray, ref: np.ndarray) -> None:
    """Within 1e-3 on every band holding at least 1e-7 of its frame's mel energy.

    Both sides compute in float32, whose FFT resolves a band only down to about
    1e-7 of the frame energy; fainter bands (the pre-emphasised lowest bands of a
    loud high tone) carry rounding noise on both sides (each ~3e-3 off a float64
    reference), so there we only require 1e-2.  The mask must cover most entries.
    """
    assert ours.shape == ref.shape
    rel = ref - np.log(np.exp(ref.astype(np.float64)).sum(axis=1, keepdims=True))
    resolved = rel > math.log(1e-7)
    diff = np.abs(ours - ref)
    assert resolved.mean() > 0.85
    assert diff[resolved].max() < 1e-3
    assert diff.max() < 1e-2


@pytest.mark.parametrize("sr", [8000, 16000])
@pytest.mark.parametrize("kind", sorted(SIGNALS))
def test_matches_kaldi_native_fbank_80_bins(sr, kind):
    x = SIGNALS[kind](sr, 1.5, seed=sr)
    ours = fbank(x, FbankConfig(sample_rate=sr, num_mel_bins=80)).numpy()
    ref = knf_fbank(x, sr, 80)
    assert ours.shape == (num_frames(len(x), FbankConfig(sample_rate=sr)), 80)
    assert_close_to_knf(ours, ref)


@pytest.mark.parametrize("sr", [8000, 16000])
def test_128_bins_empty_banks_are_log_floor_and_rest_match_float64(sr):
    x = uniform_noise(sr, 1.0, seed=3)
    ours = fbank(x, FbankConfig(sample_rate=sr, num_mel_bins=128)).numpy()
    ref, weights = numpy_reference(x.numpy(), sr, 128)
    empty = weights.sum(axis=1) == 0
    assert empty.any() and not empty.all() and not empty[64:].any()  # only some low banks are empty
    assert np.isfinite(ours).all()
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours[:, empty], np.float32(LOG_FLOOR))
    assert np.abs(ours[:, ~empty] - ref[:, ~empty]).max() < 1e-3
    assert ours[:, ~empty].min() > LOG_FLOOR + 1  # noise reaches every non-empty bank


def test_log_floor_on_silence():
    out = fbank(torch.zeros(16000), FbankConfig(num_mel_bins=40))
    assert torch.equal(out, torch.full_like(out, LOG_FLOOR))
    assert LOG_FLOOR == pytest.approx(math.log(np.finfo(np.float32).eps))


# ----------------------------------------------------------------------------- shapes, batching, frames
@pytest.mark.parametrize("n", [400, 401, 559, 560, 16000, 16079])
def test_num_frames_and_output_shape(n):
    cfg = FbankConfig(num_mel_bins=64)
    expected = 1 + (n - 400) // 160
    assert num_frames(n, cfg) == expected
    out = Fbank(cfg)(uniform_noise(16000, n / 16000))
    assert out.shape == (expected, 64) and out.dtype == torch.float32


def test_num_frames_short_and_window_sizes():
    assert num_frames(399) == 0
    cfg = FbankConfig(sample_rate=8000)
    assert (cfg.window_length, cfg.window_shift, cfg.fft_size) == (200, 80, 256)
    assert (FbankConfig().window_length, FbankConfig().window_shift, FbankConfig().fft_size) == (400, 160, 512)


def test_batched_equals_per_clip():
    cfg = FbankConfig()
    clips = torch.stack([uniform_noise(16000, 0.5, 1), sine_sweep(16000, 0.5, 2), adsr_tone(16000, 0.5, 3)])
    module = Fbank(cfg)
    batched = module(clips)
    assert batched.shape == (3, num_frames(8000, cfg), 128)
    for b in range(3):
        torch.testing.assert_close(batched[b], module(clips[b]), atol=1e-5, rtol=0)


def test_float64_input_gives_float32_output():
    x = adsr_tone(16000, 0.3)
    out64 = fbank(x.double())
    assert out64.dtype == torch.float32
    torch.testing.assert_close(out64, fbank(x), atol=1e-5, rtol=0)


def test_target_frames_crops_and_pads_with_clip_mean():
    x = torch.stack([uniform_noise(16000, 0.5, 5), adsr_tone(16000, 0.5, 6)])
    full = fbank(x)
    n = full.shape[1]
    cropped = fbank(x, FbankConfig(target_frames=n - 7))
    torch.testing.assert_close(cropped, full[:, : n - 7], atol=0, rtol=0)
    padded = fbank(x, FbankConfig(target_frames=n + 9))
    assert padded.shape == (2, n + 9, 128)
    torch.testing.assert_close(padded[:, :n], full, atol=0, rtol=0)
    clip_mean = full.mean(dim=1, keepdim=True).expand(2, 9, 128)
    torch.testing.assert_close(padded[:, n:], clip_mean, atol=1e-6, rtol=0)
    assert not torch.allclose(padded[0, n:], padded[1, n:])  # per clip, not a shared constant
    exact = fbank(x, FbankConfig(target_frames=n))
    torch.testing.assert_close(exact, full, atol=0, rtol=0)


def test_buffers_are_not_persistent():
    module = Fbank(FbankConfig(num_mel_bins=32))
    assert dict(module.state_dict()) == {}
    assert module.mel.shape == (257, 32) and module.window.shape == (400,)


# ----------------------------------------------------------------------------- errors
def test_bad_waveforms_raise_clear_errors():
    module = Fbank(FbankConfig())
    with pytest.raises(ValueError, match=r"\(2, 3, 16000\)"):
        module(torch.zeros(2, 3, 16000))
    with pytest.raises(ValueError, match=r"\(\)"):
        module(torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"\(4, 399\).*400"):
        module(torch.zeros(4, 399))
    with pytest.raises(ValueError, match=r"int16.*\(16000,\)"):
        module(torch.zeros(16000, dtype=torch.int16))
    with pytest.raises(TypeError):
        module(np.zeros(16000, dtype=np.float32))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"num_mel_bins": 0}, "num_mel_bins"),
        ({"num_mel_bins": 2.5}, "num_mel_bins"),
        ({"sample_rate": 0}, "sample_rate"),
        ({"frame_length_ms": 0.1}, "frame_length_ms"),
        ({"frame_length_ms": float("inf")}, "frame_length_ms"),
        ({"frame_shift_ms": 0.0}, "frame_shift_ms"),
        ({"frame_shift_ms": 30.0}, "frame_shift_ms"),
        ({"preemphasis": 1.5}, "preemphasis"),
        ({"low_freq": -1.0}, "low_freq"),
        ({"low_freq": 8000.0}, "low_freq"),
        ({"high_freq": 9000.0}, "high_freq"),
        ({"high_freq": -8000.0}, "high_freq"),
        ({"low_freq": 4000.0, "high_freq": 3000.0}, "high_freq"),
        ({"target_frames": 0}, "target_frames"),
    ],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        FbankConfig(**kwargs)
    assert err.value.key == key and str(err.value).startswith(f"{key}:")


def test_config_loads_from_mapping():
    cfg = config_from_dict(FbankConfig, {"num_mel_bins": 64, "target_frames": 1024, "sample_rate": 8000})
    assert cfg == FbankConfig(sample_rate=8000, num_mel_bins=64, target_frames=1024)
    assert config_from_dict(FbankConfig, {"target_frames": None}).target_frames is None
    with pytest.raises(ConfigError) as err:
        config_from_dict(FbankConfig, {"mel_bins": 64})
    assert err.value.key == "mel_bins"


def test_high_freq_offset_convention():
    assert FbankConfig(high_freq=-400.0).effective_high_freq == 7600.0
    assert FbankConfig(high_freq=7000.0).effective_high_freq == 7000.0
    assert FbankConfig().effective_high_freq == 8000.0


# ----------------------------------------------------------------------------- normalisation stats
def test_stats_normalize_and_round_trip():
    stats = FbankStats(mean=-4.0, std=2.5)
    x = torch.tensor([-4.0, 1.0, -9.0])
    torch.testing.assert_close(stats.normalize(x), torch.tensor([0.0, 1.0, -1.0]))
    assert FbankStats.from_dict(stats.to_dict()) == stats
    assert stats.to_dict() == {"mean": -4.0, "std": 2.5}


@pytest.mark.parametrize(
    "data, key",
    [
        ({"mean": 0.0, "std": 0.0}, "std"),
        ({"mean": 0.0}, "std"),
        ({"mean": "a", "std": 1.0}, "mean"),
        ({"mean": 0.0, "std": 1.0, "var": 1.0}, "var"),
        ({"mean": float("nan"), "std": 1.0}, "mean"),
    ],
)
def test_stats_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        FbankStats.from_dict(data)
    assert err.value.key == key


# ----------------------------------------------------------------------------- devices
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_runs_in_float32_on_device(device):
    x = adsr_tone(16000, 0.5, seed=9)
    ref = knf_fbank(x, 16000, 80)
    module = Fbank(FbankConfig(num_mel_bins=80)).to(device)
    out = module(x.to(device).unsqueeze(0))
    assert out.device.type == device and out.dtype == torch.float32
    assert_close_to_knf(out[0].cpu().numpy(), ref)
    # the functional form follows the input's device too
    assert fbank(x.to(device), FbankConfig(num_mel_bins=80)).device.type == device
