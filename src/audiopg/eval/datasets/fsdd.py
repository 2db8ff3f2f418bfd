"""Free Spoken Digit Dataset: its own split (takes 0-4 test) or leave-one-speaker-out."""
from __future__ import annotations

import re
from pathlib import Path

from audiopg.audio.io import AUDIO_EXTENSIONS
from audiopg.core.errors import AudioFileError, ConfigError
from audiopg.eval.datasets.base import (
    SINGLE,
    Dataset,
    DatasetError,
    FixedSplit,
    Item,
    LeaveOneGroupOut,
    Protocol,
    find_root,
)

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
    rec = root if root.is_dir() and root.name == "recordings" else find_root(root, "recordings", "FSDD") / "recordings"
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
