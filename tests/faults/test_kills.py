"""Pre-training killed (SIGKILL, in a subprocess) before, during and after its first save: the folder can then be
started again or resumed, no temp file is left, and the finished run is the one that never stopped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SRC, run_cli

TINY_MODEL = dict(preset="tiny", num_frames=32, num_mel_bins=32, patch_size=8, embed_dim=32, depth=1,
                  num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
ARGS = [a for k, v in TINY_MODEL.items() for a in ("--set", f"model.{k}={v}")] + [
    "--set", "world.events.min_seconds=0.1", "--set", "stats_clips=4", "--batch-size", "2", "--no-progress",
    "--steps", "4", "--set", "save_every_minutes=60"]

# `audiopg ARGS`, killed with SIGKILL at a save of the state: "before" the first one writes anything, "during"
# it (its temp file made, nothing written), or "after" it (when the next one begins)
KILLED_AT_SAVE = """
import os, signal, sys
import audiopg.train.pretrain as pretrain
import audiopg.train.run_dir as run_dir
from audiopg.cli.main import main

when, saves, save_state = sys.argv[1], [], pretrain.save_state

def save(folder, state):
    saves.append(state["step"])
    if (when, len(saves)) in (("before", 1), ("after", 2)):
        os.kill(os.getpid(), signal.SIGKILL)
    if when == "during":
        run_dir.atomic_write(folder / run_dir.STATE_FILE, lambda f: os.kill(os.getpid(), signal.SIGKILL))
    save_state(folder, state)

pretrain.save_state = save
sys.exit(main(sys.argv[2:]))
"""


def killed(when: str, run: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", KILLED_AT_SAVE, when, "pretrain", *ARGS, "--out", str(run)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == -9, p.stderr[-2000:]


def losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    return [r["loss"] for r in lines]


def temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    run = tmp_path_factory.mktemp("ref") / "run"
    assert run_cli(["pretrain", *ARGS, "--out", run]).rc == 0
    return losses(run)


@pytest.mark.parametrize("again", ["--out", "--resume"])
def test_killed_before_the_first_save_starts_again(tmp_path, reference, again, faults):
    run = tmp_path / "run"
    killed("before", run)
    assert (run / "config.json").exists() and not (run / "state.pt").exists()
    res = run_cli(["pretrain", *ARGS, "--out", run] if again == "--out" else ["pretrain", "--resume", run])
    assert res.rc == 0 and "before its first save; starting it again" in res.stdout + res.stderr, res.stderr
    assert losses(run) == pytest.approx(reference, abs=1e-5) and not temp_files(run)
    faults.recovered(f"killed before the first save, {again}")


def test_killed_during_the_first_save_leaves_no_temp_file_behind(tmp_path, reference, faults):
    run = tmp_path / "run"
    killed("during", run)
    assert [(run / name).stat().st_size for name in temp_files(run)] == [0]  # the empty temp state of the kill
    assert run_cli(["pretrain", "--resume", run]).rc == 0
    assert losses(run) == pytest.approx(reference, abs=1e-5) and not temp_files(run)
    faults.recovered("killed during the first save")


def test_killed_after_the_first_save_resumes_exactly(tmp_path, reference, faults):
    run = tmp_path / "run"
    killed("after", run)  # the first save is after step 1; the next (the last) never happened
    assert not (run / "encoder.safetensors").exists()
    faults_out = run_cli(["pretrain", *ARGS, "--out", run])
    assert faults_out.rc == 2 and "--resume" in faults_out.stderr  # a run with a state is not replaced silently
    res = run_cli(["pretrain", "--resume", run])
    assert res.rc == 0 and "resuming" in res.stdout + res.stderr and "at step 1 of 4" in res.stdout + res.stderr
    assert losses(run) == pytest.approx(reference, abs=1e-5) and not temp_files(run)
    assert (run / "encoder.safetensors").exists()
    faults.recovered("killed after the first save")
