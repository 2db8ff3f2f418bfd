"""Small fake evaluation data made on the fly, shared by the experiment tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def make_fsdd(root: Path, speakers=("george", "jackson", "lucas"), digits=3, takes=7) -> None:
    """An FSDD-like folder: root/fsdd/recordings/{digit}_{speaker}_{take}.wav, tones whose pitch names the digit."""
    rec = root / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    sr = 8000
    t = np.arange(int(0.25 * sr)) / sr
    for s, spk in enumerate(speakers):
        rng = np.random.default_rng(s)
        for d in range(digits):
            for k in range(takes):
                f0 = 200 * (d + 1) * (1 + 0.03 * s) * (1 + 0.01 * rng.standard_normal())
                x = 0.5 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(len(t))
                sf.write(rec / f"{d}_{spk}_{k}.wav", x.astype(np.float32), sr, subtype="PCM_16")
