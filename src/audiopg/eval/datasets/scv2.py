"""Speech Commands V2: the official train / validation / test lists."""
from __future__ import annotations

from pathlib import Path

from audiopg.audio.io import AUDIO_EXTENSIONS
from audiopg.core.errors import AudioFileError
from audiopg.eval.datasets.base import (
    SINGLE,
    Dataset,
    DatasetError,
    FixedSplit,
    Item,
    find_root,
)

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
    root = find_root(root, "testing_list.txt", "Speech Commands")
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
