"""``audiopg.Encoder``: a pre-trained encoder with its preprocessing, from waveforms to embeddings.

Preprocessing follows the checkpoint's metadata (resample, peak-normalize, Kaldi fbank, the training
statistics); short clips are padded with a noise floor, long ones windowed; the pooling (layer and pool) is the
caller's, else the checkpoint's ``embedding`` entry, else :data:`DEFAULT_LAYER`/:data:`DEFAULT_POOL`;
docs/encoder.md says how.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from audiopg.audio.fbank import Fbank, FbankConfig, FbankStats, num_frames
from audiopg.audio.io import PAD_NOISE_LEVEL, noise_floor, resample
from audiopg.core.config import from_dict, to_dict
from audiopg.core.device import resolve_device
from audiopg.core.errors import CheckpointError, ConfigError
from audiopg.core.hub import resolve_model_path
from audiopg.model.checkpoint import (
    load_encoder_file,
    read_metadata,
    resolve_encoder_path,
)
from audiopg.model.config import ModelConfig
from audiopg.model.vit import ViTEncoder

__all__ = ["DEFAULT_LAYER", "DEFAULT_POOL", "POOLS", "Embeddings", "Encoder", "embedding_length", "load_state_strict",
           "parse_layer"]

#: the layer ``embed`` pools when neither the call nor the checkpoint's ``embedding`` metadata names one
DEFAULT_LAYER: int | str = -1
#: the pooling ``embed`` uses when neither the call nor the checkpoint's ``embedding`` metadata names one
DEFAULT_POOL = "mean"
#: mean of the signal tokens; CLS token; mean then standard deviation over time of the signal columns
POOLS = ("mean", "cls", "meanstd")


@dataclass
class Embeddings:
    """What :meth:`Encoder.embed` returns; tensors on the encoder's device, float32.

    ``scene``: ``(B, W)`` with ``W = Encoder.embedding_size_for(layer, pool)``
    (``D``, ``2D`` for "meanstd", times ``depth`` for ``layer="concat"``), or
    ``(B, depth, W)`` for ``layer="all"``.
    ``frames``/``timestamps`` (only with ``timestamps=True``): per-clip
    embeddings ``(T, D)`` (``(T, depth * D)`` for "concat") and their times in milliseconds ``(T,)``, stacked to
    ``(B, T, D)``/``(B, T)`` when the input was one array or tensor, lists of
    per-clip tensors when it was a list (clips may differ in length).
    """

    scene: torch.Tensor
    frames: torch.Tensor | list[torch.Tensor] | None = None
    timestamps: torch.Tensor | list[torch.Tensor] | None = None


@dataclass
class _Job:
    clip: int  # index of the clip in the call
    start: int  # first patch column of the window
    valid: int  # columns of the window that hold signal (scene jobs)
    copy: int = -1  # shifted copy for timestamp jobs; -1 for scene jobs


class Encoder(nn.Module):
    """A :class:`~audiopg.model.ViTEncoder` plus the preprocessing its checkpoint was trained with.

    Build it with :meth:`from_pretrained`, or from a model in memory with
    ``Encoder(vit, metadata)`` (``metadata`` as in the checkpoint format:
    ``fbank``, ``fbank_stats``, ``world``, optionally ``embedding``; ``model``
    is filled in from ``vit``).  ``default_layer``/``default_pool``: what
    :meth:`embed` pools when the call names nothing (the metadata's
    ``embedding`` entry, else :data:`DEFAULT_LAYER`/:data:`DEFAULT_POOL`).
    It is an ``nn.Module``: ``.to(device)`` moves it.  See the module docstring
    for preprocessing, windowing and time-stamped embeddings.
    """

    def __init__(
        self,
        model: ViTEncoder,
        metadata: Mapping[str, Any],
        *,
        hop_seconds: float | None = None,
        pad_noise_level: float | None = None,
        source: str | os.PathLike | None = None,
        reinit: bool = False,
    ):
        super().__init__()
        where = str(source) if source is not None else "encoder metadata"
        meta = copy.deepcopy(dict(metadata))
        self._metadata = meta
        self.source = None if source is None else str(source)
        self.reinit = bool(reinit)
        meta.setdefault("model", to_dict(model.config))
        # compared as configs: metadata written before a setting existed (e.g. patch_frames) omits its default
        if _parse(ModelConfig, meta["model"], "model", where) != model.config:
            raise CheckpointError(f"{where}: the metadata's model settings differ from the model's config")
        fbank_config = _parse(FbankConfig, meta.get("fbank"), "fbank", where)
        self.fbank_config = dataclasses.replace(fbank_config, target_frames=None)
        try:
            stats = meta.get("fbank_stats")
            if not isinstance(stats, Mapping):
                raise ConfigError("fbank_stats", f"expected a mapping with mean and std, got {stats!r}")
            self.fbank_stats = FbankStats.from_dict(stats)
        except ConfigError as err:
            raise CheckpointError(f"{where}: invalid fbank_stats ({err})") from None
        if self.fbank_config.num_mel_bins != model.config.num_mel_bins:
            raise CheckpointError(
                f"{where}: fbank.num_mel_bins={self.fbank_config.num_mel_bins} but the model expects "
                f"num_mel_bins={model.config.num_mel_bins}"
            )
        world = meta.get("world")
        self.peak_normalize = bool(world.get("peak_normalize", True)) if isinstance(world, Mapping) else True
        if pad_noise_level is None:
            pad_noise_level = _world_noise_floor(world)
        if isinstance(pad_noise_level, bool) or not isinstance(pad_noise_level, (int, float)) or not (
            pad_noise_level >= 0 and math.isfinite(pad_noise_level)
        ):
            raise ValueError(f"pad_noise_level must be a finite number >= 0, got {pad_noise_level!r}")
        self.pad_noise_level = float(pad_noise_level)
        self.model = model.eval()
        self.fbank = Fbank(self.fbank_config)
        self.hop_frames = self._hop_frames(hop_seconds)
        self.default_layer, self.default_pool = self._stored_pooling(meta.get("embedding"), where)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        reinit: bool = False,
        seed: int = 0,
        revision: str | None = None,
        **kwargs: Any,
    ) -> "Encoder":
        """Load a run folder, a model folder, an ``encoder.safetensors`` file or a Hugging Face Hub repository
        (``owner/name``, at ``revision`` or ``owner/name@revision``; ``pip install audiopg[hub]``,
        :mod:`audiopg.core.hub`).

        Loading is strict: missing or unexpected weights, and weights whose shape
        differs from the architecture in the metadata, raise
        :class:`~audiopg.core.errors.CheckpointError` listing them.  ``reinit=True``
        builds the same architecture and preprocessing with fresh random weights
        (MAE initialisation, seeded by ``seed``; the checkpoint's weights are not
        read): the "random init" baseline.  ``device`` may be "auto" (CUDA when
        available).  Other keyword arguments go to the constructor
        (``hop_seconds``, ``pad_noise_level``).
        """
        device = resolve_device(device)
        file = resolve_encoder_path(resolve_model_path(path, revision))
        if reinit:
            meta, state = read_metadata(file), None
        else:
            state, meta = load_encoder_file(file, device="cpu")
        config = _parse(ModelConfig, meta.get("model"), "model", str(file))
        if reinit:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = ViTEncoder(config)
        else:
            model = ViTEncoder(config)
            load_state_strict(model, state, str(file))
        return cls(model, meta, source=file, reinit=reinit, **kwargs).to(device)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> ModelConfig:
        """The model's :class:`~audiopg.model.ModelConfig`."""
        return self.model.config

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the checkpoint metadata (model, fbank, fbank_stats, world, step, ...)."""
        return copy.deepcopy(self._metadata)

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz the encoder works at (from the metadata's fbank config)."""
        return int(self.fbank_config.sample_rate)

    @property
    def embedding_size(self) -> int:
        """Width ``D`` of the model's tokens (of a "mean" or "cls" embedding of one layer)."""
        return int(self.config.embed_dim)

    def embedding_size_for(self, layer: int | str | None = None, pool: str | None = None) -> int:
        """Length of the last axis of ``embed(..., layer=layer, pool=pool).scene`` (None: the model's default).

        ``D`` for "mean" and "cls", ``2 D`` for "meanstd"; ``layer="concat"``
        multiplies it by ``depth``; ``layer="all"`` stacks ``depth`` rows of it.
        """
        layer, pool = self.resolve_layer_pool(layer, pool)
        return embedding_length(self.embedding_size, self.depth, layer, pool)

    @property
    def depth(self) -> int:
        return int(self.config.depth)

    @property
    def window_frames(self) -> int:
        """Frames in one window (the training clip length ``num_frames``)."""
        return int(self.config.num_frames)

    @property
    def window_seconds(self) -> float:
        """Training window length: ``num_frames`` times the frame shift (10 ms), e.g. 2.56 s."""
        return self.window_frames * self.fbank_config.frame_shift_ms / 1000.0

    @property
    def hop_seconds(self) -> float:
        """Default hop between the windows of long clips."""
        return self.hop_frames * self.fbank_config.frame_shift_ms / 1000.0

    @property
    def device(self) -> torch.device:
        return self.model.cls_token.device

    def extra_repr(self) -> str:
        return (
            f"source={self.source!r}, reinit={self.reinit}, sample_rate={self.sample_rate}, "
            f"window_seconds={self.window_seconds:g}, hop_seconds={self.hop_seconds:g}, "
            f"peak_normalize={self.peak_normalize}, pad_noise_level={self.pad_noise_level:g}, "
            f"default_layer={self.default_layer!r}, default_pool={self.default_pool!r}"
        )

    # ------------------------------------------------------------------ public API
    def embed(
        self,
        waveforms: Any,
        sample_rate: int,
        *,
        layer: int | str | None = None,
        pool: str | None = None,
        batch_size: int = 32,
        normalize: bool | None = None,
        hop_seconds: float | None = None,
        timestamps: bool = False,
        timestamp_hop_ms: float = 50.0,
    ) -> Embeddings:
        """Embed clips: ``waveforms`` is a ``(B, N)`` tensor/array, a 1-D one (a batch of one) or a list of 1-D ones.

        ``sample_rate``: the rate of ``waveforms`` (resampled when it differs).
        ``layer``: -1 = final normed output; ``i`` in ``[0, depth)`` = hidden
        state after block ``i`` (un-normed, later blocks are not run); "all" =
        every block, shape ``(B, depth, W)`` where entry ``depth - 1`` is the
        final normed output (equal to ``layer=-1``); "concat" = the same rows
        concatenated, ``(B, depth * W)``.  ``pool``: "mean" over the patch
        tokens of the columns holding signal, "cls", or "meanstd" = that mean
        followed by the standard deviation over time (ddof 0) of the signal
        columns' means over frequency (``W = 2 D``).  Each window is pooled on
        its own and long clips average the windows.  ``layer``/``pool`` None:
        ``default_layer``/``default_pool``.  ``batch_size``:
        windows per forward pass.  ``normalize``: peak normalization (None =
        as the training world).  ``hop_seconds``: hop between windows of long
        clips (rounded to whole patch columns; default half a window).
        ``timestamps=True`` also returns per-timestamp embeddings every
        ``160 / d`` ms (``d`` the smallest divisor of the patch size giving a hop
        <= ``timestamp_hop_ms``; 40 ms by default) of ``layer`` (an int or
        "concat"), whatever ``pool`` -- see docs/encoder.md.
        Runs under ``torch.inference_mode``; the returned tensors are ordinary
        (non-inference) tensors on the encoder's device.
        """
        layer, pool = self.resolve_layer_pool(layer, pool)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if timestamps and layer == "all":
            raise ValueError("timestamps=True needs a single layer (an int) or 'concat', not layer='all'")
        hop_frames = self._hop_frames(hop_seconds) if hop_seconds is not None else self.hop_frames
        clips, durations_ms, stacked = self._prepare(waveforms, sample_rate, normalize)
        shifts = self._num_shifts(timestamp_hop_ms) if timestamps else 0
        with torch.inference_mode():
            scene, cols = self._run(clips, durations_ms, layer, pool, batch_size, hop_frames, shifts)
        scene = scene.clone()
        if not timestamps:
            return Embeddings(scene=scene)
        frames, stamps = _collect(cols, stacked)
        return Embeddings(scene=scene, frames=frames, timestamps=stamps)

    def embed_timestamps(
        self,
        waveforms: Any,
        sample_rate: int,
        *,
        layer: int | str | None = None,
        batch_size: int = 32,
        normalize: bool | None = None,
        hop_seconds: float | None = None,
        timestamp_hop_ms: float = 50.0,
    ) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor]]:
        """Only the time-stamped embeddings of :meth:`embed` (``frames``, ``timestamps`` in ms), without the scene pass."""
        layer, _ = self.resolve_layer_pool(layer, "mean")
        if layer == "all":
            raise ValueError("time-stamped embeddings need a single layer (an int) or 'concat', not layer='all'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        hop_frames = self._hop_frames(hop_seconds) if hop_seconds is not None else self.hop_frames
        shifts = self._num_shifts(timestamp_hop_ms)
        clips, durations_ms, stacked = self._prepare(waveforms, sample_rate, normalize)
        with torch.inference_mode():
            _, cols = self._run(clips, durations_ms, layer, "mean", batch_size, hop_frames, shifts, want_scene=False)
        return _collect(cols, stacked)

    def features(self, waveforms: Any, sample_rate: int, *, normalize: bool | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The normalized log-mel input ``(T, num_mel_bins)`` the encoder windows over, per clip.

        Same preprocessing as :meth:`embed` (resampling, peak normalization,
        noise-floor padding to at least one window and to whole patch columns,
        feature statistics).  Stacked to ``(B, T, M)`` for array/tensor input, a
        list for list input.
        """
        clips, _, stacked = self._prepare(waveforms, sample_rate, normalize)
        with torch.inference_mode():
            specs = [self._scene_spec(wave)[0].clone() for wave in clips]
        return torch.stack(specs) if stacked else specs

    # ------------------------------------------------------------------ preparation
    def check_layer_pool(self, layer: Any, pool: Any) -> None:
        """Raise ValueError unless ``layer`` (-1, a block index, "all" or "concat") and ``pool`` are valid here."""
        if not isinstance(pool, str) or pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(map(repr, POOLS))}, got {pool!r}")
        if layer in ("all", "concat"):
            return
        if isinstance(layer, bool) or not isinstance(layer, int) or not (layer == -1 or 0 <= layer < self.depth):
            raise ValueError(
                f"layer must be -1 (final output), an int in [0, {self.depth}), 'all' or 'concat', got {layer!r}"
            )

    def resolve_layer_pool(self, layer: Any = None, pool: Any = None) -> tuple[int | str, str]:
        """``(layer, pool)`` with None replaced by the model's default, checked by :meth:`check_layer_pool`."""
        layer = self.default_layer if layer is None else layer
        pool = self.default_pool if pool is None else pool
        self.check_layer_pool(layer, pool)
        return layer, pool

    def _stored_pooling(self, stored: Any, where: str) -> tuple[int | str, str]:
        """The metadata's ``embedding`` entry (``{"layer": ..., "pool": ...}``, each optional), else the library's."""
        if stored is None:
            stored = {}
        if not isinstance(stored, Mapping) or set(stored) - {"layer", "pool"}:
            raise CheckpointError(f"{where}: metadata 'embedding' must be a mapping with 'layer' and/or 'pool', "
                                  f"got {stored!r}")
        layer, pool = stored.get("layer", DEFAULT_LAYER), stored.get("pool", DEFAULT_POOL)
        try:
            self.check_layer_pool(layer, pool)
            if layer == "all":
                raise ValueError("layer 'all' gives several vectors per clip; a default must give one")
        except ValueError as err:
            raise CheckpointError(f"{where}: invalid 'embedding' metadata ({err})") from None
        return layer, pool

    def _hop_frames(self, hop_seconds: float | None) -> int:
        p, win = self.config.patch_t, self.window_frames
        if hop_seconds is None:
            return max(p, win // 2 // p * p)
        if isinstance(hop_seconds, bool) or not isinstance(hop_seconds, (int, float)) or not hop_seconds > 0:
            raise ValueError(f"hop_seconds must be a positive number, got {hop_seconds!r}")
        frames = hop_seconds * 1000.0 / self.fbank_config.frame_shift_ms
        return int(min(win, max(p, round(frames / p) * p)))

    def _num_shifts(self, hop_ms: float) -> int:
        p, shift_ms = self.config.patch_t, self.fbank_config.frame_shift_ms
        for d in range(1, p + 1):
            if p % d == 0 and p * shift_ms / d <= hop_ms + 1e-9:
                return d
        raise ValueError(f"timestamp_hop_ms={hop_ms} is below the frame shift of {shift_ms} ms")

    def timestamp_step_ms(self, timestamp_hop_ms: float = 50.0) -> float:
        """Milliseconds between the embeddings :meth:`embed_timestamps` gives for ``timestamp_hop_ms`` (40 for 50)."""
        return self._sub_step_ms(self._num_shifts(timestamp_hop_ms))

    def _sub_step_ms(self, shifts: int) -> float:
        """Milliseconds between the ``shifts`` shifted copies of a clip (one patch column split ``shifts`` ways)."""
        cfg = self.fbank_config
        return self.config.patch_t // shifts * cfg.window_shift * 1000.0 / cfg.sample_rate

    def _prepare(self, waveforms: Any, sample_rate: int, normalize: bool | None) -> tuple[list[torch.Tensor], list[float], bool]:
        """-> (mono float32 clips at the model rate on the device, durations in ms, input was stacked)."""
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
            raise ValueError(f"sample_rate must be a positive integer number of Hz, got {sample_rate!r}")
        if isinstance(waveforms, (list, tuple)):
            stacked, items = False, list(waveforms)
            if not items:
                raise ValueError("waveforms is an empty list")
        else:
            stacked = True
            arr = waveforms
            if not isinstance(arr, torch.Tensor):
                arr = np.asarray(arr)
            if arr.ndim == 1:
                arr = arr[None]
            if arr.ndim != 2:
                raise ValueError(f"waveforms must be (B, N), (N,) or a list of 1-D clips, got shape {tuple(arr.shape)}")
            if arr.shape[0] == 0:
                raise ValueError(f"waveforms is an empty batch of shape {tuple(arr.shape)}")
            items = list(arr)
        peak_norm = self.peak_normalize if normalize is None else bool(normalize)
        device = self.device
        clips, durations = [], []
        for i, item in enumerate(items):
            x = item if isinstance(item, torch.Tensor) else torch.from_numpy(np.asarray(item))
            if x.ndim != 1:
                raise ValueError(f"clip {i} must be 1-D (mono samples), got shape {tuple(x.shape)}")
            if not x.is_floating_point():
                raise ValueError(
                    f"clip {i} has dtype {x.dtype}; expected floating-point samples in [-1, 1] "
                    "(divide integer PCM by its full scale, e.g. 32768 for int16)"
                )
            if x.shape[0] == 0:
                raise ValueError(f"clip {i} is empty (0 samples)")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"clip {i} contains NaN or infinite samples")
            if bool((x.abs() > torch.finfo(torch.float32).max).any()):  # float64 beyond what float32 holds
                raise ValueError(f"clip {i} has samples up to {float(x.abs().max()):.3g}, beyond float32's range; "
                                 "scale it to [-1, 1]")
            duration = x.shape[0] / sample_rate
            if sample_rate != self.sample_rate:
                y = resample(x.detach().cpu().numpy(), int(sample_rate), self.sample_rate)
                if y.shape[-1] == 0:
                    raise ValueError(f"clip {i} ({x.shape[0]} samples at {sample_rate} Hz) is too short to resample")
                x = torch.from_numpy(y)
                duration = min(duration, y.shape[-1] / self.sample_rate)
            x = x.detach().to(device=device, dtype=torch.float32)
            if peak_norm:
                peak = x.abs().max()
                if float(peak) > 0:
                    x = x / peak
            clips.append(x)
            durations.append(1000.0 * duration)
        return clips, durations, stacked

    # ------------------------------------------------------------------ spectrograms
    def _padded_spec(self, wave: torch.Tensor, frames: int, raw: bool = False) -> torch.Tensor:
        """Normalized (``raw``: un-normalized) log-mel of ``wave`` padded with the noise floor (or cropped) to
        exactly ``frames`` frames."""
        cfg = self.fbank_config
        need = (frames - 1) * cfg.window_shift + cfg.window_length
        n = wave.shape[0]
        if n < need:
            pad = torch.from_numpy(noise_floor(need - n, self.pad_noise_level)).to(wave.device)
            wave = torch.cat([wave, pad])
        else:
            wave = wave[:need]
        spec = self.fbank(wave)
        return spec if raw else self.fbank_stats.normalize(spec)

    def _signal_columns(self, num_samples: int) -> int:
        """Patch columns holding signal: those with a frame lying entirely inside the clip (at least one column)."""
        frames = max(1, num_frames(num_samples, self.fbank_config))
        return -(-frames // self.config.patch_t)

    def _scene_spec(self, wave: torch.Tensor, raw: bool = False) -> tuple[torch.Tensor, int]:
        """(spectrogram of whole columns, at least one window; number of columns holding signal)."""
        p = self.config.patch_t
        valid = self._signal_columns(wave.shape[0])
        frames = max(self.window_frames, valid * p)
        return self._padded_spec(wave, frames, raw), valid

    def _window_starts(self, num_cols: int, hop_frames: int) -> list[int]:
        grid_t = self.window_frames // self.config.patch_t
        hop = hop_frames // self.config.patch_t
        last = num_cols - grid_t
        starts = list(range(0, last + 1, hop))
        if starts[-1] != last:
            starts.append(last)
        return starts

    # ------------------------------------------------------------------ the encoder
    def _run(
        self,
        clips: list[torch.Tensor],
        durations_ms: list[float],
        layer: int | str,
        pool: str,
        batch_size: int,
        hop_frames: int,
        shifts: int,
        want_scene: bool = True,
    ) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Windows of every clip through the encoder in batches of ``batch_size``.

        Returns the scene embeddings and, when ``shifts`` > 0, per clip the
        time-stamped embeddings and their times (ms).
        """
        p = self.config.patch_t
        grid_t = self.window_frames // p
        layers = self.depth if layer in ("all", "concat") else 1
        device, dim = self.device, self.embedding_size
        ts_dim = layers * dim  # a time-stamped embedding: the column means of every layer run, concatenated
        scene_sum = torch.zeros(len(clips), layers, dim * (2 if pool == "meanstd" else 1), device=device)
        scene_count = torch.zeros(len(clips), device=device)
        ts_sum: dict[int, torch.Tensor] = {}
        ts_count: dict[int, torch.Tensor] = {}
        ts_meta: dict[int, tuple[int, int, torch.Tensor]] = {}
        specs: list[torch.Tensor] = []
        jobs: list[_Job] = []

        def flush() -> None:
            if not specs:
                return
            cls_tok, cols = self._encode_windows(torch.stack(specs), layer)
            for w, job in enumerate(jobs):
                if job.copy < 0:
                    scene_sum[job.clip] += _pool(cls_tok[w], cols[w, :, : job.valid], pool)
                    scene_count[job.clip] += 1
                else:
                    per_column = cols[w].transpose(0, 1).reshape(grid_t, ts_dim)
                    ts_sum[job.clip][job.copy, job.start:job.start + grid_t] += per_column
                    ts_count[job.clip][job.copy, job.start:job.start + grid_t] += 1
            specs.clear()
            jobs.clear()

        def add(spec: torch.Tensor, job: _Job) -> None:
            specs.append(spec)
            jobs.append(job)
            if len(specs) >= batch_size:
                flush()

        for i, wave in enumerate(clips):
            if want_scene:
                spec, valid = self._scene_spec(wave)
                for s in self._window_starts(spec.shape[0] // p, hop_frames):
                    add(spec[s * p:(s + grid_t) * p], _Job(clip=i, start=s, valid=min(grid_t, valid - s)))
            if shifts:
                for spec_k, k, start in self._timestamp_windows(i, wave, durations_ms[i], shifts, hop_frames, ts_dim,
                                                                ts_sum, ts_count, ts_meta):
                    add(spec_k, _Job(clip=i, start=start, valid=grid_t, copy=k))
        flush()

        scene = None
        if want_scene:
            scene = scene_sum / scene_count[:, None, None]
            if layer == "concat":
                scene = scene.reshape(len(clips), -1)
            elif layer != "all":
                scene = scene[:, 0]
        out_ts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i in range(len(clips) if shifts else 0):
            count_m, sub_ms, first_ms = ts_meta[i]
            # interleave the copies: sub-column m = shifts * column + copy
            emb = (ts_sum[i] / ts_count[i][..., None]).transpose(0, 1).reshape(-1, ts_dim)[:count_m]
            if durations_ms[i] < first_ms:  # shorter than the first column's centre: one embedding, stamped mid-clip
                times = torch.full((1,), durations_ms[i] / 2, dtype=torch.float64)
            else:
                times = first_ms + sub_ms * torch.arange(count_m, dtype=torch.float64)
            out_ts.append((emb, times.to(device=device, dtype=torch.float32)))
        return scene, out_ts

    def _timestamp_windows(
        self, i: int, wave: torch.Tensor, duration_ms: float, shifts: int, hop_frames: int, ts_dim: int,
        ts_sum: dict, ts_count: dict, ts_meta: dict,
    ) -> Iterator[tuple[torch.Tensor, int, int]]:
        """Windows of the ``shifts`` shifted copies of clip ``i``; sets up its accumulators.

        The clip gets ``lead`` sub-steps of noise floor in front, so that the
        first column centre falls within the first sub-step (7.5 ms by default)
        rather than at 87.5 ms: the start of the clip is covered like its end.
        """
        cfg, p = self.fbank_config, self.config.patch_t
        grid_t = self.window_frames // p
        sub = p // shifts  # frames between copies
        sample_ms = 1000.0 / cfg.sample_rate
        sub_ms = self._sub_step_ms(shifts)
        centre_ms = ((p - 1) / 2 * cfg.window_shift + cfg.window_length / 2) * sample_ms  # of a column, from its start
        lead = int(centre_ms // sub_ms)  # sub-steps of padding in front
        first_ms = centre_ms - lead * sub_ms
        count_m = 1 if duration_ms < first_ms else int(math.floor((duration_ms - first_ms) / sub_ms + 1e-9)) + 1
        cols = max(grid_t, -(-count_m // shifts))
        front = torch.from_numpy(noise_floor(lead * sub * cfg.window_shift, self.pad_noise_level, seed=1))
        wave = torch.cat([front.to(wave.device), wave])
        spec = self._padded_spec(wave, (shifts - 1) * sub + cols * p)
        ts_sum[i] = torch.zeros(shifts, cols, ts_dim, device=self.device)
        ts_count[i] = torch.zeros(shifts, cols, device=self.device)
        ts_meta[i] = (count_m, sub_ms, first_ms)
        for k in range(shifts):
            copy_k = spec[k * sub:k * sub + cols * p]
            for s in self._window_starts(cols, hop_frames):
                yield copy_k[s * p:(s + grid_t) * p], k, s

    def _encode_windows(self, x: torch.Tensor, layer: int | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, T, M) windows -> CLS ``(W, layers, D)`` and per-column means over frequency ``(W, layers, grid_t, D)``."""
        vit = self.model
        tokens = vit.patch_tokens(x)
        if layer == -1:
            hs = vit.forward_tokens(tokens)[:, None]
        elif layer in ("all", "concat"):
            out, states = vit.forward_tokens(tokens, return_layers=True)
            hs = torch.stack(states[:-1] + [out], dim=1)
        else:
            _, states = vit.forward_tokens(tokens, stop_after=layer)
            hs = states[layer][:, None]
        w, n_layers = hs.shape[0], hs.shape[1]
        grid_t, grid_f = x.shape[1] // vit.config.patch_t, x.shape[2] // vit.config.patch_f
        cols = hs[:, :, 1:].reshape(w, n_layers, grid_t, grid_f, hs.shape[-1]).mean(dim=3)
        return hs[:, :, 0].float(), cols.float()


# ----------------------------------------------------------------------------- helpers
def _pool(cls_tok: torch.Tensor, cols: torch.Tensor, pool: str) -> torch.Tensor:
    """One window: CLS ``(layers, D)`` and the signal columns' means over frequency ``(layers, valid, D)`` ->
    ``(layers, W)``.  The mean over all signal tokens equals the mean of the column means (every column holds
    the same number of frequency patches); "meanstd" appends their standard deviation over time (ddof 0)."""
    if pool == "cls":
        return cls_tok
    mean = cols.mean(dim=1)
    if pool == "mean":
        return mean
    return torch.cat([mean, cols.std(dim=1, correction=0)], dim=-1)


def embedding_length(width: int, depth: int, layer: int | str, pool: str) -> int:
    """Values per clip of a ``layer``/``pool`` embedding of a model with ``depth`` blocks of ``width``-wide tokens
    (one row of ``layer="all"``)."""
    per_layer = width * (2 if pool == "meanstd" else 1)
    return per_layer * depth if layer == "concat" else per_layer


def parse_layer(text: str) -> int | str:
    """A layer given as text (the command line): "concat" or an integer (-1 = final output, i = after block i)."""
    if text == "concat":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"layer must be an integer (-1 = final output, i = after block i) or 'concat', "
                         f"got {text!r}") from None


def _world_noise_floor(world: Any) -> float:
    """The quietest background noise std of the training world, or PAD_NOISE_LEVEL when it records none."""
    if isinstance(world, Mapping):
        bg = world.get("background")
        if isinstance(bg, Mapping) and bg.get("enabled", True):
            level = bg.get("level")
            if isinstance(level, (list, tuple)) and level and isinstance(level[0], (int, float)):
                if math.isfinite(level[0]) and level[0] > 0:
                    return float(level[0])
    return PAD_NOISE_LEVEL


def _collect(cols: list[tuple[torch.Tensor, torch.Tensor]], stacked: bool) -> tuple[Any, Any]:
    """Per-clip (frames, timestamps) -> stacked tensors or lists of ordinary (non-inference) tensors."""
    frames = [emb.clone() for emb, _ in cols]
    stamps = [ms.clone() for _, ms in cols]
    if stacked:
        return torch.stack(frames), torch.stack(stamps)
    return frames, stamps


def _parse(cls: type, data: Any, key: str, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{where}: metadata {key!r} must be a mapping, got {type(data).__name__}")
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise CheckpointError(f"{where}: invalid {key!r} settings in the metadata ({err})") from None


def _listing(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model``, raising CheckpointError that lists missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch: {_listing(mismatched)}")
        hint = ""
        prefixes = {k.split(".", 1)[0] + "." for k in unexpected if "." in k}
        if len(prefixes) == 1 and missing:
            prefix = prefixes.pop()
            if {k[len(prefix):] for k in unexpected} >= set(missing):
                hint = f" (the keys carry a {prefix!r} prefix: a full model's state dict, not the encoder's?)"
        raise CheckpointError(
            f"{where}: the weights do not match the architecture in its metadata: {'; '.join(parts)}{hint}"
        )
    model.load_state_dict(state, strict=True)
