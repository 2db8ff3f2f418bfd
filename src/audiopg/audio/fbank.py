"""Kaldi-compatible log-mel filterbank features in pure torch (batched, any device).

docs/features.md ("The Kaldi log-mel filterbank") has the details.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from audiopg.core.config import check_range
from audiopg.core.errors import ConfigError

__all__ = [
    "FbankConfig",
    "FbankStats",
    "Fbank",
    "fbank",
    "num_frames",
    "mel_banks",
    "LOG_FLOOR",
]

EPS = float(torch.finfo(torch.float32).eps)  # 1.1920928955078125e-07, Kaldi's log floor
LOG_FLOOR = math.log(EPS)  # value of an empty (or silent) mel bank
CPU_CHUNK_SAMPLES = 163840  # audio samples per step on a CPU (one 10.24 s clip: fastest, measured)


def _check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if value < low:
        raise ConfigError(key, f"must be >= {low}, got {value}")


def _check_finite(key: str, value: Any, low: float | None = None, high: float | None = None) -> None:
    check_range(key, value, low, high)
    if not math.isfinite(value):
        raise ConfigError(key, f"must be finite, got {value}")


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class FbankConfig:
    """Settings of the log-mel filterbank; validated on construction."""

    sample_rate: int = 16000  # waveform sample rate in Hz
    num_mel_bins: int = 128  # number of triangular mel banks (output features per frame)
    frame_length_ms: float = 25.0  # analysis window length in milliseconds
    frame_shift_ms: float = 10.0  # hop between frames in milliseconds
    preemphasis: float = 0.97  # pre-emphasis coefficient p in x[i] -= p * x[i-1]; 0 disables
    low_freq: float = 20.0  # lower edge of the first mel triangle in Hz
    high_freq: float = 0.0  # upper edge of the last triangle in Hz; <= 0 means nyquist + high_freq
    target_frames: int | None = None  # pad (at the end) or crop output to this many frames; None = keep

    def __post_init__(self) -> None:
        _check_int("sample_rate", self.sample_rate, 1)
        _check_int("num_mel_bins", self.num_mel_bins, 1)
        _check_finite("frame_length_ms", self.frame_length_ms)
        _check_finite("frame_shift_ms", self.frame_shift_ms)
        _check_finite("preemphasis", self.preemphasis, 0.0, 1.0)
        _check_finite("low_freq", self.low_freq, 0.0)
        _check_finite("high_freq", self.high_freq)
        if self.target_frames is not None:
            _check_int("target_frames", self.target_frames, 1)
        if self.window_length < 2:
            raise ConfigError(
                "frame_length_ms",
                f"{self.frame_length_ms} ms at {self.sample_rate} Hz is {self.window_length} samples; need >= 2",
            )
        if self.window_shift < 1:
            raise ConfigError(
                "frame_shift_ms",
                f"{self.frame_shift_ms} ms at {self.sample_rate} Hz is {self.window_shift} samples; need >= 1",
            )
        if self.window_shift > self.window_length:
            raise ConfigError(
                "frame_shift_ms",
                f"shift of {self.window_shift} samples is longer than the {self.window_length}-sample "
                "frame; audio between frames would be skipped",
            )
        nyquist = 0.5 * self.sample_rate
        if not self.low_freq < nyquist:
            raise ConfigError("low_freq", f"must be below the nyquist frequency {nyquist} Hz, got {self.low_freq}")
        high = self.effective_high_freq
        if not 0.0 < high <= nyquist:
            raise ConfigError(
                "high_freq", f"resolves to {high} Hz, outside (0, nyquist={nyquist}] (<= 0 is an offset from nyquist)"
            )
        if not self.low_freq < high:
            raise ConfigError("high_freq", f"resolves to {high} Hz, not above low_freq={self.low_freq}")

    @property
    def window_length(self) -> int:
        """Frame length in samples (truncated, as Kaldi does)."""
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    @property
    def window_shift(self) -> int:
        """Frame shift in samples (truncated, as Kaldi does)."""
        return int(self.sample_rate * 0.001 * self.frame_shift_ms)

    @property
    def fft_size(self) -> int:
        """FFT length: the next power of two >= the window length (512 for 400)."""
        return 1 << (self.window_length - 1).bit_length()

    @property
    def effective_high_freq(self) -> float:
        """``high_freq`` in Hz after resolving the Kaldi ``<= 0`` convention."""
        return self.high_freq if self.high_freq > 0 else 0.5 * self.sample_rate + self.high_freq


def num_frames(num_samples: int, config: FbankConfig | None = None) -> int:
    """Frames Kaldi produces from ``num_samples`` with snip_edges=True (0 if shorter than a window).

    This is the count before ``config.target_frames`` is applied.
    """
    config = config or FbankConfig()
    if num_samples < config.window_length:
        return 0
    return 1 + (num_samples - config.window_length) // config.window_shift


# ----------------------------------------------------------------------------- precomputed tables
def _mel(freq: torch.Tensor | float) -> Any:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log1p(freq / 700.0)
    return 1127.0 * math.log1p(freq / 700.0)


def mel_banks(config: FbankConfig) -> torch.Tensor:
    """Kaldi mel weights, float64, shape ``(fft_size // 2 + 1, num_mel_bins)``.

    Bank ``m`` is a triangle in mel space from ``left = lo + m * d`` through
    ``lo + (m + 1) * d`` to ``lo + (m + 2) * d`` with ``d = (hi - lo) / (num_mel_bins + 1)``,
    sampled at the FFT bin frequencies ``k * sample_rate / fft_size`` for
    ``k < fft_size // 2``; the nyquist row is zero, as in Kaldi.  A triangle that
    covers no FFT bin gives an all-zero column (Kaldi would refuse; torchaudio
    keeps it, and so do we).
    """
    lo = _mel(config.low_freq)
    hi = _mel(config.effective_high_freq)
    delta = (hi - lo) / (config.num_mel_bins + 1)
    m = torch.arange(config.num_mel_bins, dtype=torch.float64)
    left, center, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
    half = config.fft_size // 2
    bin_mel = _mel(torch.arange(half, dtype=torch.float64) * (config.sample_rate / config.fft_size))[:, None]
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    weights = torch.minimum(up, down).clamp_min(0.0)  # (half, num_mel_bins)
    return torch.cat([weights, weights.new_zeros(1, config.num_mel_bins)], dim=0)


def _hanning(length: int) -> torch.Tensor:
    i = torch.arange(length, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(2.0 * math.pi * i / (length - 1))


# ----------------------------------------------------------------------------- the module
class Fbank(torch.nn.Module):
    """Log-mel filterbank, Kaldi-compatible (see the module docstring for the exact recipe).

    ``forward(waveform)`` takes a float tensor of shape ``(N,)`` or ``(B, N)`` in
    [-1, 1] scale (used as given, not multiplied by 32768) and returns float32
    features of shape ``(frames, num_mel_bins)`` or ``(B, frames, num_mel_bins)``
    on the waveform's device.  Mel banks that cover no FFT bin (e.g. the lowest of
    128 banks at 16 kHz / 512-point FFT) output ``log(eps)`` = :data:`LOG_FLOOR`,
    as torchaudio's Kaldi port does; Kaldi itself refuses such settings.

    With ``config.target_frames`` set, longer outputs are cropped at the end and
    shorter ones padded at the end with each clip's own per-mel-bin mean over its
    frames: a constant such as the log floor is a level the synthetic world never
    produces, so it would be an easy, meaningless cue.
    """

    window: torch.Tensor
    mel: torch.Tensor

    def __init__(self, config: FbankConfig | None = None):
        super().__init__()
        self.config = config or FbankConfig()
        self.register_buffer("window", _hanning(self.config.window_length).float(), persistent=False)
        self.register_buffer("mel", mel_banks(self.config).float(), persistent=False)
        self._window_fft: torch.Tensor | None = None
        assert float(self.window[0]) == 0.0, "the spectral DC removal relies on the window starting at 0"

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"sample_rate={c.sample_rate}, num_mel_bins={c.num_mel_bins}, window={c.window_length}, "
            f"shift={c.window_shift}, fft={c.fft_size}, target_frames={c.target_frames}"
        )

    def _check_input(self, waveform: Any) -> None:
        if not isinstance(waveform, torch.Tensor):
            raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}")
        if waveform.dim() not in (1, 2):
            raise ValueError(
                f"waveform must have shape (N,) or (B, N), got {tuple(waveform.shape)} ({waveform.dim()}-D)"
            )
        if not waveform.is_floating_point():
            raise ValueError(
                f"waveform must be a floating-point tensor in [-1, 1], got dtype {waveform.dtype} "
                f"with shape {tuple(waveform.shape)}"
            )
        win = self.config.window_length
        if waveform.shape[-1] < win:
            raise ValueError(
                f"waveform of shape {tuple(waveform.shape)} has {waveform.shape[-1]} samples, shorter than one "
                f"window of {win} samples ({self.config.frame_length_ms} ms at {self.config.sample_rate} Hz)"
            )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(N,) -> (frames, M) or (B, N) -> (B, frames, M) log-mel, float32 (autocast off inside)."""
        self._check_input(waveform)
        squeeze = waveform.dim() == 1
        x = waveform.unsqueeze(0) if squeeze else waveform
        chunk = max(1, CPU_CHUNK_SAMPLES // max(1, x.shape[-1]))
        if x.device.type == "cpu" and x.shape[0] > chunk:
            # on a CPU, a few clips at a time keep the frame tensors in cache (several times faster)
            out = torch.cat([self._log_mel(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
        else:
            out = self._log_mel(x)
        return out.squeeze(0) if squeeze else out

    def _log_mel(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device
        with torch.autocast(device_type=device.type, enabled=False):
            x = x.to(torch.float32)
            window = self.window.to(device=device, dtype=torch.float32)
            mel = self.mel.to(device=device, dtype=torch.float32)
            L, shift, p = self.config.window_length, self.config.window_shift, self.config.preemphasis
            # Per frame, Kaldi removes the mean m, then pre-emphasizes: y_i = x_i - p x_(i-1) - (1 - p) m
            # for i >= 1.  So pre-emphasize the waveform once, frame it (a view), and remove the
            # mean's share (1 - p) m in the spectrum, where it is m times the window's spectrum.
            # (y_0 = (1 - p)(x_0 - m) differs, but the Hanning window's first sample is 0.)
            means = F.avg_pool1d(x[:, None, :], L, shift)[:, 0]  # (B, frames)
            emph = torch.cat([x[:, :1], x[:, 1:] - p * x[:, :-1]], dim=-1) if p else x
            frames = emph.unfold(-1, L, shift)  # (B, frames, L), a view
            spectrum = torch.fft.rfft(frames * window, n=self.config.fft_size)
            spectrum -= ((1 - p) * means)[..., None] * self._window_spectrum(device)
            power = torch.view_as_real(spectrum).square().sum(-1)  # (B, frames, fft/2 + 1)
            out = torch.matmul(power, mel).clamp_min(EPS).log()  # (B, F, M)
            return self._fit_frames(out)

    def _window_spectrum(self, device: torch.device) -> torch.Tensor:
        if self._window_fft is None or self._window_fft.device != device:
            self._window_fft = torch.fft.rfft(self.window.to(device=device, dtype=torch.float32), n=self.config.fft_size)
        return self._window_fft

    def _fit_frames(self, out: torch.Tensor) -> torch.Tensor:
        target = self.config.target_frames
        if target is None or out.shape[-2] == target:
            return out
        if out.shape[-2] > target:
            return out[..., :target, :]
        fill = out.mean(dim=-2, keepdim=True)
        return torch.cat([out, fill.expand(*out.shape[:-2], target - out.shape[-2], out.shape[-1])], dim=-2)


@functools.lru_cache(maxsize=8)
def _cached_module(config: FbankConfig) -> Fbank:
    return Fbank(config)


def fbank(waveform: torch.Tensor, config: FbankConfig | None = None) -> torch.Tensor:
    """Functional form of :class:`Fbank` (module cached per config); same shapes and conventions.

    Banks that cover no FFT bin output ``log(eps)``, as in torchaudio's Kaldi port.
    """
    return _cached_module(config or FbankConfig())(waveform)


# ----------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class FbankStats:
    """Global mean/std of log-mel values; ``normalize`` follows AudioMAE: ``(x - mean) / (2 * std)``.

    Dividing by twice the std (AudioMAE / AST convention) keeps most values in
    about [-1, 1].  The numbers come from the synthetic world, never hard-coded.
    """

    mean: float  # mean of all log-mel values in the reference set
    std: float  # standard deviation of those values (> 0)

    def __post_init__(self) -> None:
        _check_finite("mean", self.mean)
        _check_finite("std", self.std)
        if not self.std > 0:
            raise ConfigError("std", f"must be > 0, got {self.std}")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / (2 * std)``."""
        return (x - self.mean) / (2.0 * self.std)

    def to_dict(self) -> dict[str, float]:
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FbankStats":
        for key in ("mean", "std"):
            if key not in data:
                raise ConfigError(key, "missing from the feature statistics")
        unknown = sorted(set(data) - {"mean", "std"})
        if unknown:
            raise ConfigError(unknown[0], "unknown key in feature statistics (known keys: mean, std)")
        for key in ("mean", "std"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(key, f"expected a number, got {value!r}")
        return cls(mean=float(data["mean"]), std=float(data["std"]))
