"""One sub-folder of audio files per class: seeded stratified cross-validation."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from audiopg.audio.io import AUDIO_EXTENSIONS
from audiopg.eval.datasets.base import SINGLE, Dataset, DatasetError, GroupCV, Item


def load_folder(root: str | Path, *, skip_bad: bool = False, seed: int = 0, n_splits: int = 5) -> Dataset:
    """One sub-folder per class (searched recursively for audio files); seeded stratified 5-fold CV."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected one sub-folder of audio files per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    items = []
    for i, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
                items.append(Item(f, i))
    counts = np.bincount([it.label for it in items], minlength=len(classes)) if items else np.zeros(0)
    classes_kept = [c for c, n in zip(classes, counts) if n > 0]
    if len(classes_kept) < 2:
        raise DatasetError(f"{root}: need at least 2 class folders holding audio files, found {len(classes_kept)}")
    if len(classes_kept) != len(classes):
        remap = {classes.index(c): j for j, c in enumerate(classes_kept)}
        items = [replace(it, label=remap[it.label]) for it in items]
    n = min(n_splits, int(np.bincount([it.label for it in items]).min()))
    if n < 2:
        raise DatasetError(f"{root}: every class needs at least 2 clips for cross-validation")
    protocol = GroupCV(n, seed, stratified=True, grouped=False,
                       reason="folder-per-class data has no official split")
    return Dataset("folder", root, SINGLE, classes_kept, items, protocol, [], [])
