"""A CSV manifest (path, label or a continuous target, optional group and split) and its protocol."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from audiopg.core.errors import ConfigError
from audiopg.eval.datasets.base import (
    REGRESSION,
    SINGLE,
    Dataset,
    DatasetError,
    FixedSplit,
    GroupCV,
    Item,
    Protocol,
    keep_existing,
    read_csv,
)

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
    rows = read_csv(path, ["path", column])
    if target_type not in ("auto", "class", "continuous"):
        raise ConfigError("target_type", f"must be auto, class or continuous, got {target_type!r}")
    raw = [str(row[column] or "").strip() for row in rows]  # a short row reads None
    for key, values in ((column, raw), ("path", [str(row["path"] or "").strip() for row in rows])):
        empty = [i for i, v in enumerate(values) if v == ""]
        if empty:
            raise DatasetError(f"{path}: row {empty[0] + 2}: empty {key!r}")
    continuous = target_type == "continuous" or (target_type == "auto" and _is_continuous(raw))
    if continuous:
        try:
            labels: list[Any] = [float(v) for v in raw]
        except ValueError as err:
            raise DatasetError(f"{path}: column {column!r} is not numeric ({err}); use --target-type class") from None
        bad = [i for i, x in enumerate(labels) if not math.isfinite(x)]
        if bad:
            raise DatasetError(f"{path}: row {bad[0] + 2}: {column!r} is {raw[bad[0]]!r}; a continuous target must "
                               f"be a finite number ({len(bad)} row(s) are not)")
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
    items, skipped = keep_existing(items, skip_bad, path)
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
