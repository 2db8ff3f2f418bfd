"""Reading real audio files and fitting clips to a length.

docs/features.md ("Reading audio") has the details.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from audiopg.core.errors import AudioFileError

__all__ = [
    "AUDIO_EXTENSIONS",
    "PAD_NOISE_LEVEL",
    "RESAMPLE_QUALITY",
    "TruncatedAudioWarning",
    "load_audio",
    "load_audio_noting",
    "resample",
    "fit_length",
    "noise_floor",
]

#: File name endings treated as audio when scanning folders (lower case).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64")

#: Standard deviation of the white-noise floor used for padding, as a fraction of full scale (-60 dBFS RMS).
PAD_NOISE_LEVEL = 1e-3

#: soxr quality recipe used by :func:`resample` and :func:`load_audio` by default.
RESAMPLE_QUALITY = "HQ"
_QUALITIES = ("HQ", "VHQ")


# ----------------------------------------------------------------------------- reading files
class TruncatedAudioWarning(UserWarning):
    """An audio file holds less audio than its header promises (a cut-off download or copy); the message names it."""


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, *, quality: str = RESAMPLE_QUALITY) -> np.ndarray:
    """Read an audio file as a mono float32 array at ``sample_rate`` Hz.

    Channels are averaged (so a full-scale stereo file stays within [-1, 1]);
    a different native rate is converted with soxr (``quality`` "HQ" or
    "VHQ").  Samples are returned as stored (floating-point files may exceed
    [-1, 1]); nothing is normalized here.

    Raises :class:`AudioFileError` -- its message starts with the path -- when
    the file is missing, a folder, unreadable or corrupt, holds 0 samples,
    contains NaN or infinite samples or values beyond float32's range, or is
    too short to resample to at least one sample.  A file holding less audio
    than its header promises (cut off) is read as it is, with a
    :class:`TruncatedAudioWarning` naming it.
    """
    _check_rate("sample_rate", sample_rate)
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if path.is_dir():
        raise AudioFileError(f"{path}: is a folder, not an audio file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioFileError(f"{path}: cannot read the file ({err.strerror})") from None
    if size == 0:
        raise AudioFileError(f"{path}: the file is empty (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            native_rate, log = f.samplerate, f.extra_info
            data = f.read(dtype="float64" if f.subtype == "DOUBLE" else "float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError, EOFError) as err:
        raise AudioFileError(f"{path}: not a readable audio file ({_reason(err, path)})") from None
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: contains no audio (0 samples)")
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise AudioFileError(f"{path}: contains {bad} NaN or infinite sample value(s); the file is corrupt")
    peak = float(np.abs(data).max())
    if peak > float(np.finfo(np.float32).max):
        raise AudioFileError(f"{path}: sample values up to {peak:.3g} lie beyond float32's range; scale the file "
                             "to [-1, 1]")
    promised = _promised_frames(log, data.shape[0])
    if promised is not None:
        warnings.warn(TruncatedAudioWarning(
            f"{path}: truncated: the header promises {promised / native_rate:.3g} s (~{promised} samples) but the "
            f"file holds {data.shape[0] / native_rate:.3g} s ({data.shape[0]}); using what is there"), stacklevel=2)
    data = data.astype(np.float32, copy=False)
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if native_rate != sample_rate:
        wave = resample(wave, native_rate, sample_rate, quality=quality)
        if wave.shape[-1] == 0:
            raise AudioFileError(
                f"{path}: too short to resample ({data.shape[0]} sample(s) at {native_rate} Hz "
                f"give no sample at {sample_rate} Hz)"
            )
    return np.ascontiguousarray(wave, dtype=np.float32)


def load_audio_noting(path: str | os.PathLike, sample_rate: int = 16000, **kwargs: Any) -> tuple[np.ndarray, str | None]:
    """:func:`load_audio`, returning the :class:`TruncatedAudioWarning`'s message (None: not truncated) instead of
    showing it, for callers that report truncated files themselves (``audiopg embed``, ``audiopg probe``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncatedAudioWarning)
        wave = load_audio(path, sample_rate, **kwargs)
    note = None
    for w in caught:
        if issubclass(w.category, TruncatedAudioWarning):
            note = str(w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return wave, note


# libsndfile's header log: "data : 32000 (should be 960)" when the data chunk is cut short
_SIZE_LINE = re.compile(r"^\s*(data|ssnd|data size|riff|form)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.I | re.M)
_STREAMED = 0xFFFF0000  # sizes from here up are placeholders of streamed files, not promises


def _promised_frames(log: str, frames: int) -> int | None:
    """Frames the header promises, when libsndfile's log says the file is shorter than that; else None."""
    sizes = {name.lower(): (int(stated), int(actual)) for name, stated, actual in _SIZE_LINE.findall(log)}
    stated, actual = next((sizes[k] for k in ("data", "ssnd", "data size", "riff", "form") if k in sizes), (0, 0))
    if not 0 < actual < stated < _STREAMED:
        return None
    return round(frames * stated / actual)


def _reason(err: BaseException, path: Path) -> str:
    """libsndfile's message without the repeated 'Error opening <path>:' prefix."""
    text = str(err).strip()
    for prefix in (f"Error opening {str(path)!r}:", f"Error opening '{path}':"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    return text or type(err).__name__


# ----------------------------------------------------------------------------- resampling
def _check_rate(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{key} must be a positive integer number of Hz, got {value!r}")


def resample(wave: np.ndarray, sr_in: int, sr_out: int, *, quality: str = RESAMPLE_QUALITY) -> np.ndarray:
    """Change the sample rate of ``wave`` (shape ``(N,)`` or ``(..., N)``, time last) with soxr.

    Returns float32 with the same leading shape and ``~N * sr_out / sr_in``
    samples; every row is resampled independently.  Equal rates return a
    float32 copy.  ``quality`` is a soxr recipe: "HQ" (default) or "VHQ".
    """
    _check_rate("sr_in", sr_in)
    _check_rate("sr_out", sr_out)
    if quality not in _QUALITIES:
        raise ValueError(f"quality must be one of {', '.join(_QUALITIES)}, got {quality!r}")
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("wave must have at least one (time) axis, got a scalar")
    if sr_in == sr_out:
        return x.copy()
    import soxr

    lead, n = x.shape[:-1], x.shape[-1]
    if n == 0:
        return np.zeros((*lead, 0), dtype=np.float32)
    if x.ndim == 1:
        return np.asarray(soxr.resample(x, int(sr_in), int(sr_out), quality=quality), dtype=np.float32)
    rows = np.ascontiguousarray(x.reshape(-1, n).T)  # soxr wants (frames, channels)
    out = soxr.resample(rows, int(sr_in), int(sr_out), quality=quality)
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).T).reshape(*lead, -1)


# ----------------------------------------------------------------------------- length fitting
def noise_floor(num_samples: int, level: float = PAD_NOISE_LEVEL, seed: int = 0) -> np.ndarray:
    """``num_samples`` of Gaussian white noise with standard deviation ``level`` (float32).

    Drawn from ``numpy.random.default_rng(seed)``: the same arguments always give
    the same samples.  ``level=0`` gives zeros.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if not (level >= 0 and np.isfinite(level)):
        raise ValueError(f"noise level must be a finite number >= 0, got {level!r}")
    if level == 0 or num_samples == 0:
        return np.zeros(num_samples, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(num_samples) * level).astype(np.float32)


def fit_length(
    wave: Any,
    num_samples: int,
    mode: str = "pad",
    *,
    crop: str = "start",
    noise_level: float = PAD_NOISE_LEVEL,
    seed: int = 0,
) -> Any:
    """Crop, pad or repeat ``wave`` (numpy array or torch tensor, time on the last axis) to ``num_samples``.

    * Longer clips are cropped: ``crop="start"`` keeps the first
      ``num_samples``, ``crop="center"`` the middle ones.
    * Shorter clips, ``mode="pad"``: the clip stays at the start and is followed
      by a white-noise floor of standard deviation ``noise_level`` (default
      :data:`PAD_NOISE_LEVEL` = 1e-3 of full scale; see the module docstring for
      why not zeros), drawn with :func:`noise_floor` from ``seed`` -- identical
      for every row of a batch.  ``noise_level=0`` pads with zeros.
    * Shorter clips, ``mode="repeat"``: the clip is tiled end to end, then cut.

    Returns the same type (and for tensors the same device and dtype) as ``wave``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if mode not in ("pad", "repeat"):
        raise ValueError(f"mode must be 'pad' or 'repeat', got {mode!r}")
    if crop not in ("start", "center"):
        raise ValueError(f"crop must be 'start' or 'center', got {crop!r}")
    is_torch = type(wave).__module__.startswith("torch")
    x = wave if is_torch else np.asarray(wave)
    if x.ndim == 0:
        raise ValueError("wave must have at least one (time) axis, got a scalar")
    n = x.shape[-1]
    if n == 0:
        raise ValueError(f"cannot fit an empty clip (shape {tuple(x.shape)}) to {num_samples} samples")
    if n >= num_samples:
        start = 0 if crop == "start" else (n - num_samples) // 2
        return x[..., start:start + num_samples]
    if mode == "repeat":
        reps = -(-num_samples // n)
        if is_torch:
            tiled = x.repeat(*([1] * (x.ndim - 1)), reps)
        else:
            tiled = np.tile(x, (*([1] * (x.ndim - 1)), reps))
        return tiled[..., :num_samples]
    pad = noise_floor(num_samples - n, noise_level, seed)
    if is_torch:
        import torch

        pad_t = torch.from_numpy(pad).to(device=x.device, dtype=x.dtype).expand(*x.shape[:-1], -1)
        return torch.cat([x, pad_t], dim=-1)
    pad_n = np.broadcast_to(pad.astype(x.dtype, copy=False), (*x.shape[:-1], pad.shape[0]))
    return np.concatenate([x, pad_n], axis=-1)
