"""FSD50K: 200 classes, multi-label; dev train / val, eval test, macro mAP."""
from __future__ import annotations

from pathlib import Path

from audiopg.eval.datasets.base import (
    MULTI,
    Dataset,
    DatasetError,
    FixedSplit,
    Item,
    find_root,
    keep_existing,
    parse_int,
    read_csv,
)


def load_fsd50k(root: str | Path, *, skip_bad: bool = False, seed: int = 0) -> Dataset:
    """FSD50K: ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv``, audio in ``FSD50K.{dev,eval}_audio/{fname}.wav``.

    200 classes (``vocabulary.csv``: index, label, mid; no header), multi-label
    (the ``labels`` column, comma-separated).  dev.csv's ``split`` column gives
    train / val; eval.csv is the test set; score = macro mAP on eval.
    """
    root = find_root(root, "FSD50K.ground_truth/dev.csv", "FSD50K")
    gt = root / "FSD50K.ground_truth"
    vocab_rows = read_csv(gt / "vocabulary.csv", [], header=False)
    classes: list[str] = []
    for r, row in enumerate(vocab_rows, start=1):
        if len(row) < 2:
            raise DatasetError(f"{gt / 'vocabulary.csv'}: row {r}: expected index,label,mid")
        if parse_int(row[0], gt / "vocabulary.csv", r, "index") != len(classes):
            raise DatasetError(f"{gt / 'vocabulary.csv'}: row {r}: indices must run 0, 1, 2, ...")
        classes.append(row[1])
    index = {c: i for i, c in enumerate(classes)}
    items = []
    parts = (("dev.csv", "FSD50K.dev_audio", None), ("eval.csv", "FSD50K.eval_audio", "test"))
    for csv_name, audio_dir, default_split in parts:
        path = gt / csv_name
        rows = read_csv(path, ["fname", "labels"] + (["split"] if default_split is None else []))
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
    items, skipped = keep_existing(items, skip_bad, gt / "dev.csv / eval.csv")
    protocol = FixedSplit("FSD50K official split: dev.csv train (fit) / val (model selection), eval.csv (test); "
                          "score = macro mAP over the classes with positives in eval", name="official-split")
    return Dataset("fsd50k", root, MULTI, classes, items, protocol, [], skipped)
