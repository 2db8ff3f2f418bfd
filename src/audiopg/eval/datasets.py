"""Evaluation datasets in their official layouts, with their official protocols.

Every loader returns a :class:`Dataset`: a list of :class:`Item` (audio path,
label(s), group, fold or split) plus a :class:`Protocol` that turns the items
into train/test (and, where the dataset defines one, validation) index splits.

===========  ====================================================  =====================================================
task         layout (under ``--data-root``)                        protocol
===========  ====================================================  =====================================================
``esc50``    ``meta/esc50.csv`` (filename, fold, target, category,  the official 5 folds (mean accuracy over folds); when
             esc10, src_file, take), ``audio/*.wav``                 the folds are only partly present: 5-fold CV
                                                                    stratified by class, grouped by ``src_file``
``us8k``     ``metadata/UrbanSound8K.csv`` (slice_file_name, fsID,  the predefined 10 folds, never reshuffled (mean
             start, end, salience, fold, classID, class),           accuracy over folds)
             ``audio/foldK/``
``scv2``     one folder per word (``_background_noise_`` is not a   train / validation / test from ``validation_list.txt``
             class), ``validation_list.txt``, ``testing_list.txt``   and ``testing_list.txt`` (train = the rest); test
                                                                    accuracy of the model chosen on validation
``fsd50k``   ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv``,     train / val from ``dev.csv``'s split column, test =
             ``FSD50K.dev_audio/``, ``FSD50K.eval_audio/``          eval; 200 classes, multi-label, macro mAP on eval
``fsdd``     ``recordings/{digit}_{speaker}_{take}.wav``            ``own``: takes 0-4 test, 5-49 train; ``loso``:
                                                                    leave one speaker out (6 folds)
``folder``   ``{class}/**/*.wav`` (any audio extension)             5-fold stratified CV (seeded)
``manifest`` a CSV with ``path``, ``label`` (or ``--target-column``), ``split`` column if present; else grouped CV by
             optional ``group``, optional ``split``                 ``group`` if present; else stratified CV
===========  ====================================================  =====================================================

The root may also be the folder *above* the dataset (e.g. the folder
``audiopg download`` extracted into): loaders look one level down for their
marker file.

Files listed in the metadata but missing on disk raise
:class:`~audiopg.core.errors.AudioFileError` naming the file; with ``skip_bad=True``
they are dropped and recorded in :attr:`Dataset.skipped` (and so in the report).
Unreadable, empty or corrupt audio is caught later, when the audio is read.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from audiopg.audio.io import AUDIO_EXTENSIONS
from audiopg.core.errors import AudioFileError, AudioPGError, ConfigError

__all__ = [
    "TASKS",
    "Item",
    "Split",
    "Protocol",
    "OfficialFolds",
    "FixedSplit",
    "GroupCV",
    "LeaveOneGroupOut",
    "Dataset",
    "DatasetError",
    "load_dataset",
    "load_esc50",
    "load_us8k",
    "load_scv2",
    "load_fsd50k",
    "load_fsdd",
    "load_folder",
    "load_manifest",
]

TASKS = ("esc50", "us8k", "scv2", "fsd50k", "fsdd", "folder", "manifest")

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


# ----------------------------------------------------------------------------- helpers
def _find_root(root: str | Path, marker: str, what: str) -> Path:
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


def _read_csv(path: Path, required: Sequence[str], header: bool = True) -> list[dict]:
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


def _int(value: str, path: Path, row: int, column: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise DatasetError(f"{path}: row {row}: column {column!r} is not an integer: {value!r}") from None


def _keep_existing(items: list[Item], skip_bad: bool, listed_in: Path) -> tuple[list[Item], list[dict]]:
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


def _fold_table(items: Sequence[Item], num_classes: int) -> dict[int, np.ndarray]:
    table: dict[int, np.ndarray] = {}
    for it in items:
        table.setdefault(int(it.fold), np.zeros(num_classes, dtype=np.int64))[int(it.label)] += 1
    return table


# ----------------------------------------------------------------------------- ESC-50
ESC50_FOLDS = (1, 2, 3, 4, 5)


def load_esc50(root: str | Path, *, skip_bad: bool = False, seed: int = 0) -> Dataset:
    """ESC-50 (``meta/esc50.csv``, ``audio/``): the official 5 folds when complete.

    "Complete" means all five official folds are present and every class occurs
    in every fold (the full dataset has 8 clips per class per fold; a few
    skipped files do not change the protocol).  Otherwise
    (e.g. a part holding one fold) the official protocol cannot run and the
    loader falls back to 5-fold cross-validation stratified by class and grouped
    by ``src_file`` (cuts of one recording never on both sides), seeded, and
    says so in :attr:`Dataset.notes` and the protocol description.
    """
    root = _find_root(root, "meta/esc50.csv", "ESC-50")
    meta = root / "meta" / "esc50.csv"
    rows = _read_csv(meta, ["filename", "fold", "target", "category", "src_file"])
    names: dict[int, str] = {}
    items = []
    for r, row in enumerate(rows, start=2):
        target = _int(row["target"], meta, r, "target")
        names.setdefault(target, row["category"])
        items.append(Item(path=root / "audio" / row["filename"], label=target, group=f"src{row['src_file']}",
                          fold=_int(row["fold"], meta, r, "fold")))
    classes = [names.get(i, f"class{i}") for i in range(max(names) + 1)]
    items, skipped = _keep_existing(items, skip_bad, meta)
    if not items:
        raise DatasetError(f"{root}: no ESC-50 audio found")
    table = _fold_table(items, len(classes))
    counts = {k: int(v.sum()) for k, v in sorted(table.items())}
    complete = set(table) == set(ESC50_FOLDS) and all(int(v.min()) > 0 for v in table.values())
    notes = []
    if complete:
        protocol: Protocol = OfficialFolds(ESC50_FOLDS, "ESC-50")
    else:
        fold_text = ", ".join(f"fold {k}: {n} clip{'s' if n != 1 else ''}" for k, n in counts.items())
        reason = (f"ESC-50 official folds only partly present ({fold_text}; the official protocol needs all 5 "
                  "folds with every class), so the official 5-fold protocol cannot run")
        protocol = GroupCV(5, seed, stratified=True, grouped=True,
                           reason="ESC-50 official folds only partly present (see the note), fallback")
        notes.append(reason + "; used instead: 5-fold cross-validation stratified by class and grouped by "
                     f"src_file ({len({it.group for it in items})} source recordings), seed {seed}. "
                     "Scores are not comparable with published ESC-50 results.")
    return Dataset("esc50", root, SINGLE, classes, items, protocol, notes, skipped)


# ----------------------------------------------------------------------------- UrbanSound8K
def load_us8k(root: str | Path, *, skip_bad: bool = False, seed: int = 0) -> Dataset:
    """UrbanSound8K: ``metadata/UrbanSound8K.csv``, ``audio/fold{K}/{slice_file_name}``; the predefined 10 folds.

    Folds come from the CSV and are never reshuffled.  If some folds are
    absent, only the present ones are used as test folds (noted); the folds are
    still never recomputed.
    """
    root = _find_root(root, "metadata/UrbanSound8K.csv", "UrbanSound8K")
    meta = root / "metadata" / "UrbanSound8K.csv"
    rows = _read_csv(meta, ["slice_file_name", "fsID", "fold", "classID", "class"])
    names: dict[int, str] = {}
    items = []
    for r, row in enumerate(rows, start=2):
        cid = _int(row["classID"], meta, r, "classID")
        fold = _int(row["fold"], meta, r, "fold")
        names.setdefault(cid, row["class"])
        items.append(Item(path=root / "audio" / f"fold{fold}" / row["slice_file_name"], label=cid,
                          group=f"fs{row['fsID']}", fold=fold))
    classes = [names.get(i, f"class{i}") for i in range(max(names) + 1)]
    items, skipped = _keep_existing(items, skip_bad, meta)
    if not items:
        raise DatasetError(f"{root}: no UrbanSound8K audio found")
    folds = sorted({it.fold for it in items})
    notes = []
    note = ""
    if folds != list(range(1, 11)):
        note = f"only folds {', '.join(map(str, folds))} present; results are not comparable with the 10-fold protocol"
        notes.append("UrbanSound8K: " + note)
    if len(folds) < 2:
        raise DatasetError(f"{root}: UrbanSound8K needs at least 2 folds present, found {folds}")
    return Dataset("us8k", root, SINGLE, classes, items, OfficialFolds(folds, "UrbanSound8K", note), notes, skipped)


# ----------------------------------------------------------------------------- Speech Commands V2
SCV2_BACKGROUND = "_background_noise_"


def _read_list(path: Path) -> set[str]:
    try:
        return {line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()}
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from None


def load_scv2(root: str | Path, *, skip_bad: bool = False, seed: int = 0) -> Dataset:
    """Speech Commands V2: 35 word classes (folders, excluding ``_background_noise_``).

    ``validation_list.txt`` and ``testing_list.txt`` (paths relative to the
    root) define validation and test; every other clip of a word folder is
    training.  Group = speaker (the file name before ``_nohash_``).  A file
    named in a list but missing raises (or is skipped with ``skip_bad``).
    """
    root = _find_root(root, "testing_list.txt", "Speech Commands")
    val_list = _read_list(root / "validation_list.txt") if (root / "validation_list.txt").exists() else None
    if val_list is None:
        raise DatasetError(f"{root}: validation_list.txt missing (Speech Commands v0.02 layout)")
    test_list = _read_list(root / "testing_list.txt")
    overlap = val_list & test_list
    if overlap:
        raise DatasetError(f"{root}: {len(overlap)} file(s) in both validation_list.txt and testing_list.txt, "
                           f"e.g. {sorted(overlap)[0]}")
    classes = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and p.name != SCV2_BACKGROUND and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no word folders")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    on_disk = set()
    for c in classes:
        for f in sorted((root / c).iterdir()):
            if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
                rel = f"{c}/{f.name}"
                on_disk.add(rel)
                split = "val" if rel in val_list else "test" if rel in test_list else "train"
                items.append(Item(f, index[c], group=f.name.split("_nohash_")[0], split=split))
    skipped = []
    for listed, name in ((val_list, "validation_list.txt"), (test_list, "testing_list.txt")):
        for rel in sorted(listed - on_disk):
            reason = f"listed in {name} but missing on disk"
            if rel.split("/")[0] not in index:
                reason = f"listed in {name} but its folder {rel.split('/')[0]!r} is not a word folder here"
            if not skip_bad:
                raise AudioFileError(f"{root / rel}: {reason} (use --skip-bad to skip missing or unreadable files)")
            skipped.append({"path": str(root / rel), "reason": reason})
    notes = []
    if len(classes) != 35:
        notes.append(f"Speech Commands: {len(classes)} word folders found (V2 has 35)")
    protocol = FixedSplit("Speech Commands V2 official split: validation_list.txt (model selection), testing_list.txt "
                          "(test), train = every other clip; score = test accuracy of the model chosen on validation",
                          name="official-split")
    return Dataset("scv2", root, SINGLE, classes, items, protocol, notes, skipped)


# ----------------------------------------------------------------------------- FSD50K
def load_fsd50k(root: str | Path, *, skip_bad: bool = False, seed: int = 0) -> Dataset:
    """FSD50K: ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv``, audio in ``FSD50K.{dev,eval}_audio/{fname}.wav``.

    200 classes (``vocabulary.csv``: index, label, mid; no header), multi-label
    (the ``labels`` column, comma-separated).  dev.csv's ``split`` column gives
    train / val; eval.csv is the test set; score = macro mAP on eval.
    """
    root = _find_root(root, "FSD50K.ground_truth/dev.csv", "FSD50K")
    gt = root / "FSD50K.ground_truth"
    vocab_rows = _read_csv(gt / "vocabulary.csv", [], header=False)
    classes: list[str] = []
    for r, row in enumerate(vocab_rows, start=1):
        if len(row) < 2:
            raise DatasetError(f"{gt / 'vocabulary.csv'}: row {r}: expected index,label,mid")
        if _int(row[0], gt / "vocabulary.csv", r, "index") != len(classes):
            raise DatasetError(f"{gt / 'vocabulary.csv'}: row {r}: indices must run 0, 1, 2, ...")
        classes.append(row[1])
    index = {c: i for i, c in enumerate(classes)}
    items = []
    parts = (("dev.csv", "FSD50K.dev_audio", None), ("eval.csv", "FSD50K.eval_audio", "test"))
    for csv_name, audio_dir, default_split in parts:
        path = gt / csv_name
        rows = _read_csv(path, ["fname", "labels"] + (["split"] if default_split is None else []))
        for r, row in enumerate(rows, start=2):
            labels = [s.strip() for s in row["labels"].split(",") if s.strip()]
            unknown = [s for s in labels if s not in index]
            if unknown:
                raise DatasetError(f"{path}: row {r}: label {unknown[0]!r} is not in vocabulary.csv")
            split = default_split or row["split"].strip()
            if split not in ("train", "val", "test"):
                raise DatasetError(f"{path}: row {r}: split must be train or val, got {split!r}")
            items.append(Item(root / audio_dir / f"{row['fname']}.wav", tuple(sorted(index[s] for s in labels)),
                              group=f"fs{row['fname']}", split=split))
    items, skipped = _keep_existing(items, skip_bad, gt / "dev.csv / eval.csv")
    protocol = FixedSplit("FSD50K official split: dev.csv train (fit) / val (model selection), eval.csv (test); "
                          "score = macro mAP over the classes with positives in eval", name="official-split")
    return Dataset("fsd50k", root, MULTI, classes, items, protocol, [], skipped)


# ----------------------------------------------------------------------------- FSDD
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)$")


def load_fsdd(root: str | Path, *, protocol: str = "own", skip_bad: bool = False, seed: int = 0) -> Dataset:
    """Free Spoken Digit Dataset: ``recordings/{digit}_{speaker}_{take}.wav``.

    ``protocol="own"``: the dataset's own split, takes 0-4 test, the rest train
    (model selection by stratified CV inside train).  ``protocol="loso"``:
    leave-one-speaker-out (model selection grouped by speaker).
    """
    if protocol not in ("own", "loso"):
        raise ConfigError("protocol", f"FSDD protocol must be 'own' or 'loso', got {protocol!r}")
    root = Path(root).expanduser()
    rec = root if root.is_dir() and root.name == "recordings" else _find_root(root, "recordings", "FSDD") / "recordings"
    items = []
    skipped = []
    for f in sorted(rec.iterdir()):
        if not f.is_file() or f.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        m = FSDD_NAME.match(f.stem)
        if not m:
            reason = "file name is not {digit}_{speaker}_{take}"
            if not skip_bad:
                raise AudioFileError(f"{f}: {reason} (use --skip-bad to skip it)")
            skipped.append({"path": str(f), "reason": reason})
            continue
        digit, speaker, take = int(m.group(1)), m.group(2), int(m.group(3))
        items.append(Item(f, digit, group=speaker, split="test" if take < 5 else "train"))
    if not items:
        raise DatasetError(f"{rec}: no FSDD recordings")
    classes = [str(d) for d in range(10)]
    if protocol == "own":
        proto: Protocol = FixedSplit("FSDD own split: takes 0-4 of every speaker and digit are the test set, "
                                     "takes 5-49 train", name="own")
    else:
        proto = LeaveOneGroupOut("speaker")
        proto.name = "loso"
    return Dataset("fsdd", root, SINGLE, classes, items, proto, [], skipped)


# ----------------------------------------------------------------------------- generic: folder per class
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


# ----------------------------------------------------------------------------- generic: CSV manifest
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test", "eval": "test", "evaluation": "test"}


def _is_continuous(values: list[str]) -> bool:
    """Auto-detection: numeric with a non-integer value, or more than 30 distinct numeric values."""
    try:
        nums = [float(v) for v in values]
    except ValueError:
        return False
    if not all(math.isfinite(x) for x in nums):
        return False
    return any(not float(x).is_integer() for x in nums) or len(set(nums)) > 30


def load_manifest(
    path: str | Path,
    *,
    target_column: str | None = None,
    target_type: str = "auto",
    skip_bad: bool = False,
    seed: int = 0,
    n_splits: int = 5,
) -> Dataset:
    """A CSV manifest: ``path`` (absolute or relative to the CSV's folder), ``label`` (or ``target_column``),
    optional ``group`` (grouped CV) and optional ``split`` (train/val/test).

    ``target_type``: "class", "continuous" (ridge regression; R² and median
    absolute error) or "auto" (continuous when the column is numeric and has a
    non-integer value or more than 30 distinct values).  ``path`` may also be a
    folder holding ``manifest.csv``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: no such manifest (expected a CSV file with columns path,label[,group][,split])")
    column = target_column or "label"
    rows = _read_csv(path, ["path", column])
    if target_type not in ("auto", "class", "continuous"):
        raise ConfigError("target_type", f"must be auto, class or continuous, got {target_type!r}")
    raw = [str(row[column]).strip() for row in rows]
    empty = [i for i, v in enumerate(raw) if v == ""]
    if empty:
        raise DatasetError(f"{path}: row {empty[0] + 2}: empty {column!r}")
    continuous = target_type == "continuous" or (target_type == "auto" and _is_continuous(raw))
    if continuous:
        try:
            labels: list[Any] = [float(v) for v in raw]
        except ValueError as err:
            raise DatasetError(f"{path}: column {column!r} is not numeric ({err}); use --target-type class") from None
        classes = [column]
        task_type = REGRESSION
    else:
        classes = sorted(set(raw), key=lambda s: (len(s), s) if s.isdigit() else (10**9, s))
        idx = {c: i for i, c in enumerate(classes)}
        labels = [idx[v] for v in raw]
        task_type = SINGLE
    has_group = "group" in rows[0] and any(str(r.get("group") or "").strip() for r in rows)
    has_split = "split" in rows[0] and any(str(r.get("split") or "").strip() for r in rows)
    items = []
    for r, (row, label) in enumerate(zip(rows, labels), start=2):
        p = Path(row["path"]).expanduser()
        if not p.is_absolute():
            p = path.parent / p
        split = None
        if has_split:
            s = str(row.get("split") or "").strip().lower()
            if s not in SPLIT_NAMES:
                raise DatasetError(f"{path}: row {r}: split must be one of train/val/test, got {row.get('split')!r}")
            split = SPLIT_NAMES[s]
        group = None
        if has_group:
            group = str(row.get("group") or "").strip() or None
        items.append(Item(p, label, group=group, split=split))
    items, skipped = _keep_existing(items, skip_bad, path)
    if not items:
        raise DatasetError(f"{path}: no audio files")
    if has_split:
        protocol: Protocol = FixedSplit("manifest split column: train (fit), val (model selection, if any), test",
                                        name="manifest-split", inner_grouped=has_group)
    else:
        n = n_splits
        if not continuous:
            n = min(n, int(np.bincount([it.label for it in items]).min()))
        if has_group:
            n = min(n, len({it.group for it in items}))
        if n < 2:
            raise DatasetError(f"{path}: too few clips (or groups) per class for cross-validation")
        protocol = GroupCV(n, seed, stratified=not continuous, grouped=has_group,
                           reason="manifest without a split column")
    return Dataset("manifest", path, task_type, classes, items, protocol, [], skipped)


# ----------------------------------------------------------------------------- dispatcher
def load_dataset(
    task: str,
    root: str | Path,
    *,
    protocol: str | None = None,
    target_column: str | None = None,
    target_type: str = "auto",
    skip_bad: bool = False,
    seed: int = 0,
) -> Dataset:
    """Load ``task`` (one of :data:`TASKS`) from ``root``."""
    if task not in TASKS:
        raise ConfigError("task", f"unknown task {task!r} (known: {', '.join(TASKS)})")
    if protocol is not None and task != "fsdd":
        raise ConfigError("protocol", f"--protocol applies to fsdd only; {task} uses its official protocol")
    if target_column is not None and task != "manifest":
        raise ConfigError("target_column", "--target-column applies to the manifest task only")
    if task == "esc50":
        return load_esc50(root, skip_bad=skip_bad, seed=seed)
    if task == "us8k":
        return load_us8k(root, skip_bad=skip_bad, seed=seed)
    if task == "scv2":
        return load_scv2(root, skip_bad=skip_bad, seed=seed)
    if task == "fsd50k":
        return load_fsd50k(root, skip_bad=skip_bad, seed=seed)
    if task == "fsdd":
        return load_fsdd(root, protocol=protocol or "own", skip_bad=skip_bad, seed=seed)
    if task == "folder":
        return load_folder(root, skip_bad=skip_bad, seed=seed)
    return load_manifest(root, target_column=target_column, target_type=target_type, skip_bad=skip_bad, seed=seed)
