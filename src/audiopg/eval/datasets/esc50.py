"""ESC-50: the official 5 folds, or grouped cross-validation when the folds are only partly present."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from audiopg.eval.datasets.base import (
    SINGLE,
    Dataset,
    DatasetError,
    GroupCV,
    Item,
    OfficialFolds,
    Protocol,
    find_root,
    keep_existing,
    parse_int,
    read_csv,
)

ESC50_FOLDS = (1, 2, 3, 4, 5)


def _fold_table(items: Sequence[Item], num_classes: int) -> dict[int, np.ndarray]:
    table: dict[int, np.ndarray] = {}
    for it in items:
        table.setdefault(int(it.fold), np.zeros(num_classes, dtype=np.int64))[int(it.label)] += 1
    return table


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
    root = find_root(root, "meta/esc50.csv", "ESC-50")
    meta = root / "meta" / "esc50.csv"
    rows = read_csv(meta, ["filename", "fold", "target", "category", "src_file"])
    names: dict[int, str] = {}
    items = []
    for r, row in enumerate(rows, start=2):
        target = parse_int(row["target"], meta, r, "target")
        names.setdefault(target, row["category"])
        items.append(Item(path=root / "audio" / row["filename"], label=target, group=f"src{row['src_file']}",
                          fold=parse_int(row["fold"], meta, r, "fold")))
    classes = [names.get(i, f"class{i}") for i in range(max(names) + 1)]
    items, skipped = keep_existing(items, skip_bad, meta)
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
