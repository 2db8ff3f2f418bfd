"""`audiopg synth` and `audiopg stats` from the command line."""
from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from audiopg.cli.main import main


def test_synth_writes_wavs_factors_and_a_spectrogram_grid(tmp_path, capsys):
    out = tmp_path / "clips"
    assert main(["synth", "--n", "5", "--seed", "3", "--seconds", "1.0", "--out", str(out)]) == 0
    wavs = sorted(out.glob("clip_*.wav"))
    assert len(wavs) == 5
    audio, sr = sf.read(wavs[0])
    assert sr == 16000 and audio.shape == (16000,) and np.abs(audio).max() <= 1.0
    lines = (out / "factors.jsonl").read_text().splitlines()
    assert len(lines) == 5
    recs = [json.loads(line) for line in lines]
    assert [r["file"] for r in recs] == [w.name for w in wavs]
    assert all(r["source"] in ("harmonic", "fm", "pulse", "noise") for r in recs)
    png = (out / "spectrograms.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "world.json").read_text())["seconds"] == 1.0
    # same seed, same clips
    out2 = tmp_path / "again"
    main(["synth", "--n", "5", "--seed", "3", "--seconds", "1.0", "--out", str(out2)])
    assert np.array_equal(sf.read(wavs[2])[0], sf.read(out2 / wavs[2].name)[0])


def test_synth_overrides_and_bad_values_give_one_line_errors(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["synth", "--n", "2", "--seconds", "0.6", "--set", "sources.noise.enabled=false",
                 "--set", "sources.fm.enabled=false", "--set", "sources.pulse.enabled=false", "--out", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "factors.jsonl").read_text().splitlines()]
    assert {r["source"] for r in recs} == {"harmonic"}
    assert main(["synth", "--n", "2", "--set", "lowpass.cutoff=[5000, 100]", "--out", str(out)]) == 2
    assert "lowpass.cutoff" in capsys.readouterr().err
    assert main(["synth", "--n", "0", "--out", str(out)]) == 2
    assert main(["synth", "--preset", "nonexistent", "--out", str(out)]) == 2
    assert "unknown world preset" in capsys.readouterr().err


def test_stats_prints_and_writes_the_world_statistics(tmp_path, capsys):
    path = tmp_path / "stats.json"
    args = ["stats", "--clips", "8", "--seconds", "1.0", "--batch-size", "4", "--out", str(path)]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads(path.read_text())
    assert printed == saved
    assert -12 < saved["mean"] < 2 and 1 < saved["std"] < 8  # log-mel of peak-normalized clips
    main([*args, "--overwrite"])  # the file exists now
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mean"] == saved["mean"]
