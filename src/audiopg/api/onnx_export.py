"""The encoder as an ONNX graph: un-normalized Kaldi log-mel in, the clip embedding out.

The graph normalizes with the checkpoint's statistics, cuts the windows ``Encoder.embed`` cuts (its hop, the
last window aligned to the end), pools the signal columns and averages the windows, so its output equals
``Encoder.embed(...).scene``.  The fbank itself stays outside (resampling and noise-floor padding cannot go into
a graph anyway): :func:`onnx_inputs` is the reference implementation; docs/export.md says how to compute it
elsewhere.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audiopg.audio.fbank import LOG_FLOOR, num_frames
from audiopg.core.errors import AudioPGError
from audiopg.core.io import atomic_write_bytes
from audiopg.model.encoder import Encoder

__all__ = ["OPSET", "INPUT_NAMES", "OUTPUT_NAME", "EncoderGraph", "onnx_inputs", "require_onnx", "export_onnx",
           "run_onnx"]

OPSET = 18
INPUT_NAMES = ("logmel", "signal_frames")
OUTPUT_NAME = "embedding"


class EncoderGraph(nn.Module):
    """``(logmel (B, T, M) float32, signal_frames (B,) int64) -> embedding (B, W)`` for one pooling.

    ``logmel``: each clip's un-normalized log-mel, padded at the end to at least ``max(num_frames,
    ceil(signal_frames / patch) * patch)`` frames (noise floor, as :func:`onnx_inputs`), then to the batch's
    common ``T`` (a multiple of the patch size; anything may fill the rest: it is never read).
    ``signal_frames``: fbank frames holding signal per clip.
    """

    def __init__(self, encoder: Encoder, layer: int | str | None = None, pool: str | None = None):
        super().__init__()
        self.encoder = encoder.eval()
        self.layer, self.pool = encoder.resolve_layer_pool(layer, pool)
        if self.layer == "all":
            raise ValueError("layer 'all' gives several vectors per clip; the graph gives one (an int or 'concat')")
        p = encoder.config.patch_t
        self.patch = p
        self.grid_t = encoder.window_frames // p
        self.hop = encoder.hop_frames // p
        self.mean, self.scale = encoder.fbank_stats.mean, 2.0 * encoder.fbank_stats.std

    def forward(self, logmel: torch.Tensor, signal_frames: torch.Tensor) -> torch.Tensor:
        p, grid_t, hop = self.patch, self.grid_t, self.hop
        x = (logmel - self.mean) / self.scale
        batch, cols = x.shape[0], x.shape[1] // p
        valid = (signal_frames.clamp_min(1) + (p - 1)) // p  # columns holding signal, per clip (B,)
        last = valid.clamp_min(grid_t) - grid_t  # first column of each clip's last window (B,)
        # every clip's windows: starts 0, hop, 2 hop, ... up to its last, plus its last when off the grid
        regular = torch.arange(0, cols - grid_t + 1, hop, device=x.device)  # (R,)
        starts = torch.cat([regular[None].expand(batch, -1), last[:, None]], dim=1)  # (B, R + 1)
        weight = torch.cat([regular[None] <= last[:, None], (last % hop != 0)[:, None]], dim=1).float()
        offsets = torch.arange(grid_t * p, device=x.device)
        frames = starts[:, :, None] * p + offsets  # (B, R + 1, window frames)
        rows = torch.arange(batch, device=x.device)[:, None, None]
        windows = x[rows, frames].reshape(-1, grid_t * p, x.shape[2])  # (B (R + 1), window frames, M)
        cls_tok, col_means = self.encoder._encode_windows(windows, self.layer)  # (N, L, D), (N, L, grid_t, D)
        n = starts.shape[1]
        column = starts[:, :, None] + torch.arange(grid_t, device=x.device)  # (B, R + 1, grid_t)
        mask = (column < valid[:, None, None]).float().reshape(-1, 1, grid_t, 1)
        pooled = self._pool(cls_tok, col_means, mask)  # (N, L, W)
        pooled = pooled.reshape(batch, n, *pooled.shape[1:])
        scene = (pooled * weight[:, :, None, None]).sum(1) / weight.sum(1)[:, None, None]
        return scene.reshape(batch, -1)  # one layer, or "concat": the layers side by side

    def _pool(self, cls_tok: torch.Tensor, cols: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``Encoder``'s pooling with the signal columns as a mask (every window holds at least one)."""
        if self.pool == "cls":
            return cls_tok
        count = mask.sum(2).clamp_min(1.0)
        mean = (cols * mask).sum(2) / count
        if self.pool == "mean":
            return mean
        var = ((cols - mean[:, :, None]) ** 2 * mask).sum(2) / count
        return torch.cat([mean, var.sqrt()], dim=-1)


def onnx_inputs(encoder: Encoder, waveforms: Any, sample_rate: int, *,
                normalize: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The reference preprocessing: clips as ``Encoder.embed`` takes them -> ``(logmel (B, T, M) float32,
    signal_frames (B,) int64)``, clips of different lengths padded to the longest with the log floor."""
    clips, _, _ = encoder._prepare(waveforms, sample_rate, normalize)  # the Encoder's own steps, unnormalized
    with torch.inference_mode():
        specs = [encoder._scene_spec(wave, raw=True)[0].cpu() for wave in clips]
    frames = [max(1, num_frames(wave.shape[0], encoder.fbank_config)) for wave in clips]
    longest = max(spec.shape[0] for spec in specs)
    logmel = np.stack([np.pad(spec.numpy(), ((0, longest - spec.shape[0]), (0, 0)),
                              constant_values=LOG_FLOOR) for spec in specs])
    return logmel.astype(np.float32), np.asarray(frames, dtype=np.int64)


def require_onnx(path: str | os.PathLike) -> Path:
    """``path`` as a Path; a clear error unless it ends in .onnx and the ``onnx`` extra is installed."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise AudioPGError(f"--onnx: {path}: the file name must end in .onnx")
    try:
        import onnx  # noqa: F401 - the exporter needs both
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise AudioPGError(f"--onnx: ONNX export needs the onnx extra ({err.name} is not installed): "
                           "pip install audiopg[onnx]") from None
    return path


def export_onnx(encoder: Encoder, path: str | os.PathLike, *, layer: int | str | None = None,
                pool: str | None = None) -> Path:
    """Write the graph of ``encoder`` (its default pooling unless ``layer``/``pool``) to ``path`` as one
    self-contained ONNX file, with dynamic batch and frame axes.  Needs ``pip install audiopg[onnx]``."""
    path = require_onnx(path)
    if encoder.device.type != "cpu":  # export a CPU copy; the caller's encoder stays where it is
        encoder = copy.deepcopy(encoder).cpu()
    try:
        graph = EncoderGraph(encoder, layer, pool)
    except ValueError as err:
        raise AudioPGError(f"--layer/--pool: {err}") from None
    example = (torch.zeros(2, 2 * encoder.window_frames, encoder.config.num_mel_bins),
               torch.tensor([encoder.window_frames // 2, 2 * encoder.window_frames]))
    batch, frames = torch.export.Dim("batch"), torch.export.Dim("frames_over_patch")
    shapes = {"logmel": {0: batch, 1: encoder.config.patch_t * frames}, "signal_frames": {0: batch}}
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter logs every optional op it skips
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph.eval()(*example)  # fills the position-embedding cache before tracing
            program = torch.onnx.export(graph, example, dynamic_shapes=shapes, input_names=list(INPUT_NAMES),
                                        output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=True,
                                        external_data=False, verbose=False)
    finally:
        quiet.setLevel(level)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, program.model_proto.SerializeToString())
    return path


def run_onnx(path: str | os.PathLike, logmel: np.ndarray, signal_frames: np.ndarray) -> np.ndarray:
    """Embeddings from an exported graph with ``onnxruntime`` on the CPU (``pip install audiopg[onnx]``)."""
    try:
        import onnxruntime
    except ImportError:
        raise AudioPGError("onnxruntime is not installed: pip install audiopg[onnx]") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = dict(zip(INPUT_NAMES, (np.asarray(logmel, np.float32), np.asarray(signal_frames, np.int64))))
    return session.run([OUTPUT_NAME], feeds)[0]
