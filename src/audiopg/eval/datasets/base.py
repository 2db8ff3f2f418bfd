"""What every dataset loader returns: items, the task types, the protocols that split them, the dataset.

Shared by the loaders of this package; the loaders' layouts and protocols are described in docs/evaluation.md.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from audiopg.core.errors import AudioFileError, AudioPGError

__all__ = [
    "SINGLE",
    "MULTI",
    "REGRESSION",
    "DatasetError",
    "Item",
    "Split",
    "Protocol",
    "OfficialFolds",
    "FixedSplit",
    "GroupCV",
    "LeaveOneGroupOut",
    "Dataset",
    "find_root",
    "read_csv",
    "parse_int",
    "keep_existing",
]

#: task types: what a dataset's target is, and so which probe and metric evaluate it
SINGLE, MULTI, REGRESSION = "single_label", "multi_label", "regression"


class DatasetError(AudioPGError):
    """A dataset folder or metadata file is missing or does not have the expected layout."""


# ----------------------------------------------------------------------------- items and splits
@dataclass(frozen=True)
class Item:
    """One clip: its audio file, its target and where it sits in the protocol.

    ``label``: class index (single-label), tuple of class indices (multi-label)
    or float (regression).  ``group``: the unit that must never straddle a
    train/test boundary (source recording, speaker, ...), or None.  ``fold``:
    official fold number, or None.  ``split``: "train", "val" or "test", or None.
    """

    path: Path
    label: Any
    group: str | None = None
    fold: int | None = None
    split: str | None = None


@dataclass(frozen=True)
class Split:
    """Index arrays into the item list: one train/test (and optional validation) split."""

    name: str
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None

    def __post_init__(self) -> None:
        for key in ("train", "test"):
            if len(getattr(self, key)) == 0:
                raise DatasetError(f"split {self.name!r}: the {key} part is empty")


class Protocol:
    """How a dataset is evaluated.  ``splits(items, targets)`` -> list of :class:`Split`.

    ``description`` is the sentence the report prints.  ``inner_grouped``: model
    selection inside a training part must group by ``Item.group`` (the outer
    split is grouped).  ``official``: the dataset's own protocol is followed as
    published (False when a fallback had to be used; the description says why).
    """

    name = "protocol"
    inner_grouped = False
    official = True

    def splits(self, items: Sequence[Item], targets: np.ndarray) -> list[Split]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def description(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "official": self.official}


class OfficialFolds(Protocol):
    """Predefined folds (ESC-50, UrbanSound8K): each fold is the test set once, the others train.

    The fold of every item comes from the metadata and is never recomputed.
    """

    name = "official-folds"
    inner_grouped = True

    def __init__(self, folds: Sequence[int], dataset: str, note: str = ""):
        self.folds = sorted(int(f) for f in folds)
        self.dataset = dataset
        self.note = note

    @property
    def description(self) -> str:
        text = (f"{self.dataset} official folds {', '.join(map(str, self.folds))}: each fold is the test set once, "
                "the other folds train; score = mean over folds")
        return text + (f" ({self.note})" if self.note else "")

    def splits(self, items: Sequence[Item], targets: np.ndarray) -> list[Split]:
        fold = np.array([-1 if it.fold is None else it.fold for it in items])
        out = []
        for k in self.folds:
            test = np.flatnonzero(fold == k)
            train = np.flatnonzero((fold != k) & (fold >= 0))
            out.append(Split(f"fold{k}", train, test))
        return out


class FixedSplit(Protocol):
    """Train / (validation) / test from each item's ``split``: the dataset's own lists."""

    name = "fixed-split"

    def __init__(self, text: str, name: str = "fixed-split", inner_grouped: bool = False):
        self.text = text
        self.name = name
        self.inner_grouped = inner_grouped

    @property
    def description(self) -> str:
        return self.text

    def splits(self, items: Sequence[Item], targets: np.ndarray) -> list[Split]:
        split = np.array([it.split or "" for it in items])
        val = np.flatnonzero(split == "val")
        return [Split("test", np.flatnonzero(split == "train"), np.flatnonzero(split == "test"),
                      val if len(val) else None)]


class GroupCV(Protocol):
    """Seeded K-fold cross-validation: stratified by class (classification) and grouped by ``Item.group``.

    StratifiedGroupKFold when there are groups and classes, GroupKFold for a
    grouped regression, StratifiedKFold / KFold without groups.
    """

    name = "cv"
    official = False

    def __init__(self, n_splits: int = 5, seed: int = 0, stratified: bool = True, grouped: bool = True,
                 reason: str = ""):
        self.n_splits = int(n_splits)
        self.seed = int(seed)
        self.stratified = bool(stratified)
        self.inner_grouped = bool(grouped)
        self.reason = reason

    @property
    def description(self) -> str:
        kind = {(True, True): "StratifiedGroupKFold (stratified by class, grouped by source)",
                (True, False): "GroupKFold (grouped by source)",
                (False, True): "StratifiedKFold (stratified by class)",
                (False, False): "KFold"}[(self.inner_grouped, self.stratified)]
        text = f"{self.n_splits}-fold cross-validation, {kind}, shuffled with seed {self.seed}; score = mean over folds"
        return (self.reason + ": " + text) if self.reason else text

    def splits(self, items: Sequence[Item], targets: np.ndarray) -> list[Split]:
        from sklearn.model_selection import (
            GroupKFold,
            KFold,
            StratifiedGroupKFold,
            StratifiedKFold,
        )

        n = len(items)
        x = np.zeros((n, 1))
        groups = np.array([it.group if it.group is not None else f"#{i}" for i, it in enumerate(items)])
        if self.inner_grouped:
            n_groups = len(set(groups.tolist()))
            if n_groups < self.n_splits:
                raise DatasetError(f"cannot make {self.n_splits} grouped folds from {n_groups} group(s)")
            if self.stratified:
                cv = StratifiedGroupKFold(self.n_splits, shuffle=True, random_state=self.seed)
            else:
                cv = GroupKFold(self.n_splits, shuffle=True, random_state=self.seed)
            gen = cv.split(x, targets, groups)
        elif self.stratified:
            gen = StratifiedKFold(self.n_splits, shuffle=True, random_state=self.seed).split(x, targets)
        else:
            gen = KFold(self.n_splits, shuffle=True, random_state=self.seed).split(x)
        return [Split(f"cv{k + 1}", np.sort(tr), np.sort(te)) for k, (tr, te) in enumerate(gen)]


class LeaveOneGroupOut(Protocol):
    """Each group (e.g. speaker) is the test set once."""

    name = "leave-one-group-out"
    inner_grouped = True

    def __init__(self, what: str = "group"):
        self.what = what

    @property
    def description(self) -> str:
        return f"leave-one-{self.what}-out: each {self.what} is the test set once; score = mean over {self.what}s"

    def splits(self, items: Sequence[Item], targets: np.ndarray) -> list[Split]:
        groups = np.array([str(it.group) for it in items])
        return [Split(f"{self.what}={g}", np.flatnonzero(groups != g), np.flatnonzero(groups == g))
                for g in sorted(set(groups.tolist()))]


# ----------------------------------------------------------------------------- the dataset
@dataclass
class Dataset:
    """Items plus everything needed to evaluate them."""

    name: str
    root: Path
    task_type: str  # "single_label" | "multi_label" | "regression"
    classes: list[str]  # class names (index = label); [target column name] for regression
    items: list[Item]
    protocol: Protocol
    notes: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"path": ..., "reason": ...}

    @property
    def metric(self) -> str:
        return {SINGLE: "accuracy", MULTI: "mAP", REGRESSION: "r2"}[self.task_type]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def targets(self) -> np.ndarray:
        """Single-label: (N,) int; multi-label: (N, C) 0/1 uint8; regression: (N,) float."""
        if self.task_type == SINGLE:
            return np.array([it.label for it in self.items], dtype=np.int64)
        if self.task_type == REGRESSION:
            return np.array([it.label for it in self.items], dtype=np.float64)
        y = np.zeros((len(self.items), len(self.classes)), dtype=np.uint8)
        for i, it in enumerate(self.items):
            y[i, list(it.label)] = 1
        return y

    def stratify_targets(self) -> np.ndarray:
        """A 1-D label per item for stratification (multi-label: the first label)."""
        if self.task_type == MULTI:
            return np.array([min(it.label) if it.label else -1 for it in self.items])
        return self.targets()

    def splits(self) -> list[Split]:
        return self.protocol.splits(self.items, self.stratify_targets())

    def without(self, bad: Iterable[int], reasons: dict[int, str] | None = None) -> "Dataset":
        """A copy without the items at positions ``bad`` (recorded in ``skipped``)."""
        bad = set(int(i) for i in bad)
        if not bad:
            return self
        reasons = reasons or {}
        skipped = self.skipped + [{"path": str(self.items[i].path), "reason": reasons.get(i, "skipped")}
                                  for i in sorted(bad)]
        items = [it for i, it in enumerate(self.items) if i not in bad]
        return replace(self, items=items, skipped=skipped)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "root": str(Path(self.root).resolve()),
            "task_type": self.task_type,
            "metric": self.metric,
            "num_items": len(self.items),
            "num_classes": self.num_classes if self.task_type != REGRESSION else None,
            "classes": self.classes,
            "protocol": self.protocol.to_dict(),
            "notes": list(self.notes),
            "skipped": list(self.skipped),
        }


# ----------------------------------------------------------------------------- loader helpers
def find_root(root: str | Path, marker: str, what: str) -> Path:
    """``root`` itself or its single subfolder holding ``marker`` (e.g. ESC-50-master/ after extraction)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such folder (expected the {what} root holding {marker})")
    if (root / marker).exists():
        return root
    if root.is_dir():
        found = sorted(p for p in root.iterdir() if p.is_dir() and (p / marker).exists())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DatasetError(f"{root}: several {what} copies below it ({', '.join(p.name for p in found)}); "
                               "pass one of them as --data-root")
    raise DatasetError(f"{root}: not a {what} folder (no {marker} in it or in a folder just below it)")


def read_csv(path: Path, required: Sequence[str], header: bool = True) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f)) if header else list(csv.reader(f))
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not a valid CSV file ({err})") from None
    if header:
        if not rows:
            raise DatasetError(f"{path}: no rows")
        missing = [c for c in required if c not in rows[0]]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(rows[0])})")
    return rows


def parse_int(value: str, path: Path, row: int, column: str) -> int:
    """A metadata cell holding a class index, fold or index: an integer >= 0 (DatasetError names the row)."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise DatasetError(f"{path}: row {row}: column {column!r} is not an integer: {value!r}") from None
    if number < 0:
        raise DatasetError(f"{path}: row {row}: column {column!r} must be >= 0, got {number}")
    return number


def keep_existing(items: list[Item], skip_bad: bool, listed_in: Path) -> tuple[list[Item], list[dict]]:
    """Drop (skip_bad) or raise on items whose file is missing."""
    kept, skipped = [], []
    for it in items:
        if it.path.is_file():
            kept.append(it)
            continue
        reason = f"listed in {listed_in.name} but missing on disk"
        if not skip_bad:
            raise AudioFileError(f"{it.path}: {reason} (use --skip-bad to skip missing or unreadable files)")
        skipped.append({"path": str(it.path), "reason": reason})
    return kept, skipped
