"""The real-audio f0 check: a probe fit on the world's tonal clips, applied to voiced segments of spoken digits.

FSDD recordings are cut into stable voiced segments measured by YIN (:mod:`audiopg.analysis.pitch`); the f0
probe of the synthetic clips is applied to their embeddings unchanged, and compared with probes fit on the real
segments themselves (docs/analysis.md).  The data is only read, never copied.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from audiopg.analysis.decoding import transfer_probe
from audiopg.analysis.pitch import RealClip, voiced_clips
from audiopg.core.errors import AudioPGError
from audiopg.eval.datasets import DATA_ENV, default_data_root
from audiopg.eval.datasets.fsdd import FSDD_NAME
from audiopg.model.encoder import Encoder

__all__ = ["find_fsdd", "fsdd_clips", "real_pitch_check"]

SELECTION = ("per file its longest run of YIN-voiced frames (threshold 0.15, energy within 40 dB of the file's "
             "loudest frame, 60-500 Hz) whose pitch stays within 1 semitone of the run's median, 0.2-0.5 s; "
             "target = log2 of that median")  # the defaults of voiced_clips
SYNTHETIC_SETS = ("random", "sweep_f0")  # the probe sets the transferred f0 probe is fit on


def find_fsdd(explicit: Path | None = None) -> Path | None:
    """The FSDD folder: ``explicit`` (must exist), else ``fsdd/`` of the shared evaluation data
    (:func:`audiopg.eval.datasets.default_data_root`); None when it holds no WAV files."""
    if explicit is not None:
        if not explicit.is_dir():
            raise AudioPGError(f"{explicit}: --fsdd is not a folder")
        return explicit
    folder = default_data_root() / "fsdd"
    return folder if folder.is_dir() and next(folder.rglob("*.wav"), None) is not None else None


def _speaker(path: str) -> str:
    """The speaker of an FSDD file name ``{digit}_{speaker}_{take}``, else its folder."""
    match = FSDD_NAME.match(Path(path).stem)
    return match.group(2) if match else Path(path).parent.name


def fsdd_clips(explicit: Path | None, sample_rate: int, max_clips: int, seed: int = 0
               ) -> tuple[list[RealClip] | None, dict[str, Any]]:
    """Up to ``max_clips`` stable voiced segments of FSDD files (shuffled), and a note on how they were found;
    (None, note with ``skipped``) when there is no FSDD or fewer than 10 segments."""
    root = find_fsdd(explicit)
    if root is None:
        return None, {"skipped": f"no FSDD found (set --fsdd or ${DATA_ENV}/fsdd)"}
    files = sorted(root.rglob("*.wav"))
    order = np.random.default_rng(seed).permutation(len(files))
    clips: list[RealClip] = []
    counts = {"files": 0, "unreadable": 0, "no_segment": 0}
    for start in range(0, len(files), 200):  # shuffled files until enough segments
        batch, c = voiced_clips([files[i] for i in order[start:start + 200]], sample_rate)
        clips += batch
        for k in counts:
            counts[k] += c[k]
        if len(clips) >= max_clips:
            break
    clips = clips[:max_clips]
    seconds = np.array([len(c.audio) / c.sample_rate for c in clips]) if clips else np.zeros(1)
    note = {"root": str(root), "wav_files": len(files), **counts, "segments": len(clips),
            "segment_seconds": {"min": float(seconds.min()), "median": float(np.median(seconds)),
                                "max": float(seconds.max())},
            "selection": SELECTION}
    if len(clips) < 10:
        return None, {**note, "skipped": f"only {len(clips)} stable voiced segments found"}
    return clips, note


def real_pitch_check(encoder: Encoder, embeddings: Mapping[str, np.ndarray], sets: Sequence[Any],
                     clips: Sequence[RealClip], *, layer: int, batch_size: int = 32, folds: int = 5,
                     seed: int = 0) -> dict[str, Any]:
    """Per layer :func:`~audiopg.analysis.decoding.transfer_probe` from the tonal clips of the ``random`` set and
    the f0 sweep (``embeddings[name]``: (N, L, D)) to the real segments, real CV by recording and by speaker.
    ``plot`` holds (true log2 f0, transferred prediction at ``layer``) for the figure."""
    by_name = {s.name: s for s in sets}
    X_real = np.concatenate([
        encoder.embed([c.audio for c in clips[i:i + 128]], clips[0].sample_rate, layer="all", pool="mean",
                      batch_size=batch_size).scene.float().cpu().numpy()
        for i in range(0, len(clips), 128)])
    y_real = np.log2([c.f0 for c in clips])
    speakers = [_speaker(c.path) for c in clips]
    groups_real = {"recording": np.arange(len(clips))}
    if len(set(speakers)) >= 2:
        groups_real["speaker"] = np.unique(speakers, return_inverse=True)[1]
    Xs, ys, gs = [], [], []
    offset = 0
    for name in SYNTHETIC_SETS:
        if name not in by_name:
            continue
        s = by_name[name]
        m = s.valid("log2_f0")
        Xs.append(embeddings[name][m])
        ys.append(s.targets["log2_f0"][m])
        gs.append(s.groups[m] + offset)
        offset += int(s.groups.max()) + 1
    X_syn, y_syn, g_syn = np.concatenate(Xs), np.concatenate(ys), np.concatenate(gs)
    per_layer = [transfer_probe(X_syn[:, l], y_syn, g_syn, X_real[:, l], y_real, groups_real, folds, seed)
                 for l in range(X_real.shape[1])]
    return {
        "clips": len(clips), "speakers": sorted(set(speakers)), "synthetic_clips": int(len(y_syn)),
        "f0_hz": {"min": float(2 ** y_real.min()), "median": float(2 ** np.median(y_real)),
                  "max": float(2 ** y_real.max())},
        "per_layer": per_layer, "layer": layer,
        "plot": (y_real, per_layer[layer]["pred"]),
    }
