"""Frozen features for the probe: encoder embeddings, the handcrafted log-mel baseline, and their cache.

:func:`extract_features` reads every clip once for all extractors and caches each feature matrix as ``.npy``
under a key of the checkpoint, the file list and every option that changes the numbers (docs/evaluation.md).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from audiopg.audio.fbank import FbankConfig, fbank
from audiopg.audio.io import fit_length, load_audio_noting
from audiopg.core.errors import AudioFileError, AudioPGError, ConfigError
from audiopg.core.io import atomic_write_bytes, atomic_write_text
from audiopg.eval.datasets.base import Dataset
from audiopg.model.encoder import Encoder

__all__ = [
    "HANDCRAFTED_FBANK",
    "HANDCRAFTED_DIM",
    "handcrafted_features",
    "EncoderFeatures",
    "HandcraftedFeatures",
    "FeatureCache",
    "default_cache_dir",
    "extract_features",
]

CACHE_VERSION = 1


# ----------------------------------------------------------------------------- the handcrafted baseline
#: the filterbank of the baseline: 80 mel bins, 16 kHz, Kaldi defaults otherwise
HANDCRAFTED_FBANK = FbankConfig(sample_rate=16000, num_mel_bins=80)
#: length of the feature vector (mean and std of every bin)
HANDCRAFTED_DIM = 2 * HANDCRAFTED_FBANK.num_mel_bins


def handcrafted_features(clips: Sequence[np.ndarray], sample_rate: int = 16000) -> np.ndarray:
    """(N, 160) float32: mean and std over frames of the 80-bin Kaldi log-mel (25 ms windows, 10 ms hop) of each
    16 kHz clip, not normalized (the probe standardizes); clips shorter than a window get the noise-floor pad."""
    if sample_rate != HANDCRAFTED_FBANK.sample_rate:
        raise ValueError(f"handcrafted features expect {HANDCRAFTED_FBANK.sample_rate} Hz audio, got {sample_rate} Hz")
    out = np.empty((len(clips), HANDCRAFTED_DIM), dtype=np.float32)
    win = HANDCRAFTED_FBANK.window_length
    for i, clip in enumerate(clips):
        x = np.asarray(clip, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"clip {i} must be a non-empty 1-D array, got shape {x.shape}")
        if x.size < win:
            x = fit_length(x, win)
        feats = fbank(torch.from_numpy(np.ascontiguousarray(x)), HANDCRAFTED_FBANK).double()
        out[i, : HANDCRAFTED_FBANK.num_mel_bins] = feats.mean(dim=0).numpy()
        out[i, HANDCRAFTED_FBANK.num_mel_bins:] = feats.std(dim=0, unbiased=False).numpy()
    return out


# ----------------------------------------------------------------------------- extractors and their cache
class EncoderFeatures:
    """Scene embeddings of an :class:`audiopg.Encoder` (pretrained, or ``reinit`` = random init)."""

    def __init__(self, name: str, encoder: Encoder, *, layer: int | str | None = None, pool: str | None = None,
                 batch_size: int = 32, checkpoint_sha256: str = "", seed: int = 0):
        try:
            layer, pool = encoder.resolve_layer_pool(layer, pool)  # None: the encoder's default
        except ValueError as err:
            raise ConfigError("--layer/--pool", str(err)) from None
        if layer == "all":
            raise ConfigError("--layer", "the probe needs one vector per clip: a single layer or 'concat', not 'all'")
        self.name = name
        self.encoder = encoder
        self.layer = layer
        self.pool = pool
        self.batch_size = int(batch_size)
        self.sample_rate = int(encoder.sample_rate)
        self.checkpoint_sha256 = checkpoint_sha256
        self.seed = int(seed)
        kind = f"random init (same architecture, seed {seed})" if encoder.reinit else "pretrained"
        self.description = f"{kind} encoder, layer {layer}, {pool}-pooled, {encoder.embedding_size_for(layer, pool)}-d"

    def key(self) -> dict:
        return {"kind": "encoder", "checkpoint_sha256": self.checkpoint_sha256, "reinit": bool(self.encoder.reinit),
                "seed": self.seed if self.encoder.reinit else None, "layer": self.layer, "pool": self.pool,
                "sample_rate": self.sample_rate, "hop_seconds": self.encoder.hop_seconds,
                "pad_noise_level": self.encoder.pad_noise_level, "peak_normalize": self.encoder.peak_normalize}

    def __call__(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        out = self.encoder.embed(list(clips), sample_rate=self.sample_rate, layer=self.layer, pool=self.pool,
                                 batch_size=self.batch_size)
        return out.scene.detach().float().cpu().numpy()


class HandcraftedFeatures:
    """The 160-d log-mel mean/std baseline."""

    name = "handcrafted"
    sample_rate = HANDCRAFTED_FBANK.sample_rate
    description = "80-bin Kaldi log-mel, mean and std over frames (160-d), standardized"

    def key(self) -> dict:
        return {"kind": "handcrafted", "fbank": HANDCRAFTED_FBANK.__dict__, "stats": "mean,std(ddof=0)"}

    def __call__(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return handcrafted_features(clips, self.sample_rate)


def default_cache_dir() -> Path:
    """``$AUDIOPG_CACHE/embeddings`` or ``~/.cache/audiopg/embeddings``."""
    base = os.environ.get("AUDIOPG_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "audiopg") / "embeddings"


class FeatureCache:
    """``.npy`` feature matrices (one row per item, NaN rows for bad files) with a JSON sidecar."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = None if folder is None else Path(folder)

    @staticmethod
    def key(extractor: Any, files: list[dict], max_seconds: float | None) -> str:
        blob = json.dumps({"version": CACHE_VERSION, "extractor": extractor.key(), "files": files,
                           "max_seconds": max_seconds}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _paths(self, name: str, key: str) -> tuple[Path, Path]:
        assert self.folder is not None
        stem = f"{name}-{key[:24]}"
        return self.folder / f"{stem}.npy", self.folder / f"{stem}.json"

    def load(self, name: str, key: str) -> tuple[np.ndarray, dict] | None:
        if self.folder is None:
            return None
        npy, meta = self._paths(name, key)
        if not (npy.exists() and meta.exists()):
            return None
        try:
            info = json.loads(meta.read_text())
            x = np.load(npy, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if info.get("key") != key:
            return None
        return x, info

    def save(self, name: str, key: str, x: np.ndarray, info: dict) -> None:
        if self.folder is None:
            return
        npy, meta = self._paths(name, key)
        buf = io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        atomic_write_bytes(npy, buf.getvalue())
        atomic_write_text(meta, json.dumps({**info, "key": key}, indent=1) + "\n")


def _file_list(dataset: Dataset) -> list[dict]:
    out = []
    for it in dataset.items:
        path = str(Path(it.path).resolve())
        try:
            st = it.path.stat()
            out.append({"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        except OSError:
            out.append({"path": path, "size": None, "mtime_ns": None})
    return out


def extract_features(
    dataset: Dataset,
    extractors: Sequence[Any],
    *,
    cache: FeatureCache | None = None,
    skip_bad: bool = False,
    max_seconds: float | None = None,
    chunk: int = 64,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    truncated: dict[int, str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Features of every item for every extractor, reading each audio file once.

    Returns ``({name: (N, D) float32 with NaN rows for bad files}, {index: reason}
    of the bad files)``.  Without ``skip_bad`` the first bad file raises
    :class:`AudioFileError` naming it (also when only the cache knows about it).  Files that hold less audio
    than their headers promise are used as they are, logged, and put in ``truncated`` ({index: warning}; also
    remembered by the cache).  An extractor giving NaN or infinite features raises AudioPGError naming the clip.
    """
    truncated = {} if truncated is None else truncated
    cache = cache or FeatureCache(None)
    log = log or (lambda msg: None)
    files = _file_list(dataset)
    out: dict[str, np.ndarray] = {}
    bad: dict[int, str] = {}
    todo = []
    keys = {}
    for ex in extractors:
        keys[ex.name] = FeatureCache.key(ex, files, max_seconds)
        hit = cache.load(ex.name, keys[ex.name])
        if hit is None:
            todo.append(ex)
            continue
        x, info = hit
        out[ex.name] = x
        for i, reason in info.get("bad", {}).items():
            bad[int(i)] = reason
        truncated.update({int(i): note for i, note in info.get("truncated", {}).items()})
        log(f"{ex.name}: features from cache ({cache.folder})")
    if bad and not skip_bad:
        i = min(bad)
        raise AudioFileError(f"{bad[i]} (use --skip-bad to skip unreadable files)")
    if todo:
        rates = sorted({ex.sample_rate for ex in todo})
        n = len(dataset.items)
        results: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {ex.name: [] for ex in todo}
        new_bad: dict[int, str] = {}
        new_truncated: dict[int, str] = {}
        t_start = time.time()
        bar = tqdm(total=n, desc="features (" + ", ".join(ex.name for ex in todo) + ")", unit="clip",
                   disable=None if progress else True, leave=False)
        for start in range(0, n, chunk):
            idx = list(range(start, min(n, start + chunk)))
            clips: dict[int, list[np.ndarray]] = {sr: [] for sr in rates}
            good = []
            for i in idx:
                path = dataset.items[i].path
                try:
                    loaded = {sr: load_audio_noting(path, sr) for sr in rates}
                except AudioFileError as err:
                    if not skip_bad:
                        bar.close()
                        raise AudioFileError(f"{err} (use --skip-bad to skip unreadable files)") from None
                    new_bad[i] = str(err)
                    continue
                note = next((n for _, n in loaded.values() if n), None)
                if note:
                    new_truncated[i] = note
                    log(f"warning: {note}")
                for sr in rates:
                    x = loaded[sr][0]
                    if max_seconds is not None:
                        x = x[: max(1, int(round(max_seconds * sr)))]
                    clips[sr].append(x)
                good.append(i)
            if good:
                for ex in todo:
                    feats = np.asarray(ex(clips[ex.sample_rate]), dtype=np.float32)
                    rows = np.flatnonzero(~np.isfinite(feats).all(axis=1))
                    if len(rows):
                        bar.close()
                        first = dataset.items[good[rows[0]]].path
                        raise AudioPGError(f"{first}: {ex.name} features hold NaN or infinite values"
                                           + (f" (and those of {len(rows) - 1} more clip(s))" if len(rows) > 1 else "")
                                           + f" with {ex.description}")
                    results[ex.name].append((np.asarray(good), feats))
            bar.update(len(idx))
            done, tenth = idx[-1] + 1, max(1, n // 10)
            if bar.disable and progress and (done == n or done // tenth != (done - len(idx)) // tenth):
                names = ", ".join(ex.name for ex in todo)
                log(f"features ({names}): {done}/{n} clips, {time.time() - t_start:.0f} s")
        bar.close()
        bad.update(new_bad)
        truncated.update(new_truncated)
        for ex in todo:
            parts = results[ex.name]
            dim = parts[0][1].shape[1] if parts else 0
            x = np.full((n, dim), np.nan, dtype=np.float32)
            for rows, feats in parts:
                x[rows] = feats
            out[ex.name] = x
            cache.save(ex.name, keys[ex.name], x, {"extractor": ex.key(), "description": ex.description,
                                                   "num_items": n, "bad": {str(k): v for k, v in new_bad.items()},
                                                   "truncated": {str(k): v for k, v in new_truncated.items()},
                                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return out, bad
