"""Tests for the GPU check's CPU rehearsal (benchmarks/gpu_check.py --tiny) and its data packing
(benchmarks/pack_eval_data.py), on a small FSDD-like and ESC-50-like dataset written by the test."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiopg.eval.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
import pack_eval_data  # noqa: E402

TASKS = ("fsdd-own", "fsdd-loso", "esc50")
MODELS = ("pretrained", "random", "handcrafted")
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device tool brings back from $OUT


def write_source_data(root: Path) -> None:
    """3 digits x 3 speakers x 6 takes of 0.3 s at 8 kHz; 3 ESC-50 classes x 6 clips of 1 s at 16 kHz (fold 4)."""
    rng = np.random.default_rng(0)
    rec = root / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    t = np.arange(2400) / 8000
    for digit in range(3):
        for speaker in ("anna", "bert", "cleo"):
            for take in range(6):
                x = 0.3 * np.sin(2 * np.pi * (200 + 150 * digit) * t) + 0.05 * rng.normal(size=t.size)
                sf.write(rec / f"{digit}_{speaker}_{take}.wav", x, 8000, subtype="PCM_16")
    esc = root / "esc50-fold4"
    (esc / "audio").mkdir(parents=True)
    (esc / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    t = np.arange(16000) / 16000
    for c in range(3):
        for k in range(6):
            name = f"4-{1000 + 10 * c + k}-A-{c}.wav"
            x = 0.2 * np.sin(2 * np.pi * (300 + 500 * c) * t) + 0.05 * rng.normal(size=t.size)
            sf.write(esc / "audio" / name, x, 16000, subtype="PCM_16")
            rows.append(f"{name},4,{c},class{c},False,{1000 + 10 * c + k},A")
    (esc / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    (esc / "LICENSE").write_text("test licence\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(source WAV layout, its packed FLAC copy)."""
    root = tmp_path_factory.mktemp("gpu_check")
    write_source_data(root / "src")
    assert pack_eval_data.pack_fsdd(root / "src" / "fsdd", root / "packed" / "fsdd") == 54
    assert pack_eval_data.pack_esc50(root / "src" / "esc50-fold4", root / "packed" / "esc50-fold4") == 18
    return root / "src", root / "packed"


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}  # as on the device
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


# ----------------------------------------------------------------------------- packing
def test_the_flac_copy_is_lossless_and_the_loaders_read_it_unchanged(data):
    src, packed = data
    flacs = sorted((packed / "fsdd" / "recordings").iterdir())
    assert len(flacs) == 54 and {f.suffix for f in flacs} == {".flac"}
    for wav in [src / "fsdd" / "recordings" / "2_cleo_5.wav", src / "esc50-fold4" / "audio" / "4-1013-A-1.wav"]:
        flac = next(packed.rglob(wav.stem + ".flac"))
        a, rate_a = sf.read(wav, dtype="int16")
        b, rate_b = sf.read(flac, dtype="int16")
        assert rate_a == rate_b and np.array_equal(a, b)
        assert sf.info(str(flac)).format == "FLAC"
    rows = (packed / "esc50-fold4" / "meta" / "esc50.csv").read_text().splitlines()
    assert rows[0] == "filename,fold,target,category,esc10,src_file,take"
    assert rows[1] == "4-1000-A-0.flac,4,0,class0,False,1000,A" and len(rows) == 19
    assert (packed / "esc50-fold4" / "LICENSE").read_text() == "test licence\n"
    fsdd = load_dataset("fsdd", packed / "fsdd", protocol="loso")
    esc = load_dataset("esc50", packed / "esc50-fold4")
    assert len(fsdd.items) == 54 and len(esc.items) == 18
    assert {it.group for it in fsdd.items} == {"anna", "bert", "cleo"}


def test_float_audio_is_refused(tmp_path):
    sf.write(tmp_path / "x.wav", np.zeros(100, dtype=np.float32), 8000, subtype="FLOAT")
    with pytest.raises(ValueError, match="FLOAT samples cannot go into FLAC"):
        pack_eval_data.to_flac(tmp_path / "x.wav", tmp_path / "x.flac")
    assert not (tmp_path / "x.flac").exists()


# ----------------------------------------------------------------------------- the whole check, tiny
def test_the_tiny_rehearsal_runs_every_part_and_prints_the_table_last(data, tmp_path):
    _, packed = data
    out = tmp_path / "out"
    proc = run_check("--tiny", "--data", str(packed), "--out", str(out), "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tail = proc.stdout.strip().splitlines()
    assert tail[-1] == f"full results: {out}/gpu_check.json"
    table = "\n".join(tail[-16:])
    for text in ("(a) tiny, batch 4", "eager (", "(b) world + fbank alone", "paper", "rich", "(c) pre-training: tiny",
                 "probes, accuracy %", "handcrafted", "CPU tiny pre-trained (BENCHMARKS.md)"):
        assert text in table, text
    assert "ERROR" not in proc.stdout

    res = json.loads((out / "gpu_check.json").read_text())
    parts = res["parts"]
    assert parts["env"]["torch"] and parts["env"]["device"].startswith("cpu")
    run = parts["throughput"]["runs"]["eager"]
    assert run["pipeline_clips_per_s"] > 0 and run["model_clips_per_s"] > 0 and run["ratio"] > 0
    assert run["batch_size"] == 4 and run["model"]["depth"] == 1
    for world in ("paper", "rich"):
        assert parts["world"][world]["clips_per_s"] > 0 and parts["world"][world]["batch"] == 2
    pre = parts["pretrain"]
    assert pre["status"] == "finished" and pre["steps"] >= 1 and pre["batch_size"] == 4
    assert pre["objective"] is None and not any(o.startswith("objective=") for o in pre["overrides"])
    for t in TASKS:
        for m in MODELS:
            r = parts[f"probe-{t}-{m}"]
            assert "error" not in r and 0.0 <= r["mean"] <= 1.0 and r["metric"] == "accuracy", (t, m)
        assert len(parts[f"probe-{t}-pretrained"]["folds"]) == {"fsdd-own": 1, "fsdd-loso": 3, "esc50": 5}[t]
    # what the device tool brings back: at most 8 plain files, right in $OUT, with plain names
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.log", "gpu_check.md", "pretrain_config.json",
                     "pretrain_metrics.jsonl", "reconstructions.png"]
    assert all(OUT_NAME.match(f) for f in files)
    log = (out / "gpu_check.log").read_text()
    assert "===== pretrain" in log and "===== probe-esc50-handcrafted" in log
    assert (out / "gpu_check.md").read_text().startswith("```\n== GPU check")


def test_failing_parts_are_recorded_and_the_others_still_run(data, tmp_path):
    _, packed = data
    out = tmp_path / "out"
    proc = run_check("--tiny", "--data", str(packed), "--out", str(out), "--parts", "world,probes",
                     "--worlds", "paper,nosuchworld", "--tasks", "fsdd-own")
    assert proc.returncode == 1
    tail = proc.stdout.strip().splitlines()
    assert tail[-1] == f"full results: {out}/gpu_check.json"
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert parts["world"]["paper"]["clips_per_s"] > 0
    assert "nosuchworld" in parts["world"]["nosuchworld"]["error"] and "nosuchworld" in parts["world"]["error"]
    assert parts["probe-fsdd-own-handcrafted"]["mean"] > 0.5
    assert parts["probe-fsdd-own-pretrained"]["error"].startswith("skipped: no encoder")
    assert "throughput" not in parts and "pretrain" not in parts
    table = "\n".join(tail)
    assert "(a) tiny, batch 4, end to end" in table and "ERROR not run" in table
    assert "    nosuchworld" in table and "errors (each part's output is in gpu_check.log):" in table


def test_a_part_that_runs_out_of_time_is_killed_and_keeps_what_it_saved(tmp_path):
    def slow(args, save):
        save({"first": 1})
        time.sleep(60)

    def crash(args, save):
        save({"first": 2})
        os._exit(3)

    t0 = time.monotonic()
    part = gpu_check.Part("slow", slow, argparse.Namespace(), tmp_path, cap_s=1.5)
    res = part.wait()
    assert time.monotonic() - t0 < 20
    assert res["first"] == 1 and res["error"] == "timed out after 2 s (killed)"
    res = gpu_check.Part("crash", crash, argparse.Namespace(), tmp_path, cap_s=30).wait()
    assert res["first"] == 2 and res["error"] == "the process ended with status 3"
    assert gpu_check.Part("ok", lambda args, save: {"x": 3}, argparse.Namespace(), tmp_path, cap_s=30).wait()["x"] == 3


def test_the_objective_is_passed_only_when_given():
    args = argparse.Namespace(pretrain_set=["batch_size=256"], objective=None)
    assert gpu_check.pretrain_overrides(args) == ["batch_size=256"]
    args.objective = "latent"
    assert gpu_check.pretrain_overrides(args) == ["batch_size=256", "objective=latent"]
