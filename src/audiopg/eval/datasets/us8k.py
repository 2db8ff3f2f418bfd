"""UrbanSound8K: the predefined 10 folds, never reshuffled."""
from __future__ import annotations

from pathlib import Path

from audiopg.eval.datasets.base import (
    SINGLE,
    Dataset,
    DatasetError,
    Item,
    OfficialFolds,
    find_root,
    keep_existing,
    parse_int,
    read_csv,
)


def load_us8k(root: str | Path, *, skip_bad: bool = False, seed: int = 0) -> Dataset:
    """UrbanSound8K: ``metadata/UrbanSound8K.csv``, ``audio/fold{K}/{slice_file_name}``; the predefined 10 folds.

    Folds come from the CSV and are never reshuffled.  If some folds are
    absent, only the present ones are used as test folds (noted); the folds are
    still never recomputed.
    """
    root = find_root(root, "metadata/UrbanSound8K.csv", "UrbanSound8K")
    meta = root / "metadata" / "UrbanSound8K.csv"
    rows = read_csv(meta, ["slice_file_name", "fsID", "fold", "classID", "class"])
    names: dict[int, str] = {}
    items = []
    for r, row in enumerate(rows, start=2):
        cid = parse_int(row["classID"], meta, r, "classID")
        fold = parse_int(row["fold"], meta, r, "fold")
        names.setdefault(cid, row["class"])
        items.append(Item(path=root / "audio" / f"fold{fold}" / row["slice_file_name"], label=cid,
                          group=f"fs{row['fsID']}", fold=fold))
    classes = [names.get(i, f"class{i}") for i in range(max(names) + 1)]
    items, skipped = keep_existing(items, skip_bad, meta)
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
