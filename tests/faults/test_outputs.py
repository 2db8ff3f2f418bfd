"""Output paths of every command: bad places, full disks, reused folders, a run folder as export target, modes.

The rule (docs/faults.md, "Outputs, kills and the operating system"): an output folder is new or replaced whole
with --overwrite (never a folder holding something else), an operating-system error ends in one line naming the
path, and nothing already written changes.
"""
from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli

from audiopg.core import io as audiopg_io
from audiopg.eval import download
from audiopg.experiments.curve import run_curve
from audiopg.train.config import PretrainConfig
from audiopg.train.pretrain import pretrain

TINY_MODEL = dict(preset="tiny", num_frames=32, num_mel_bins=32, patch_size=8, embed_dim=32, depth=1,
                  num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
TINY_ARGS = [a for k, v in TINY_MODEL.items() for a in ("--set", f"model.{k}={v}")] + [
    "--set", "world.events.min_seconds=0.1", "--set", "stats_clips=4", "--batch-size", "2", "--no-progress",
    "--steps", "2"]
SYNTH = ["synth", "--n", "2", "--seconds", "0.5"]
STATS = ["stats", "--clips", "2", "--seconds", "0.5", "--mel-bins", "32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 2-step run of a tiny model."""
    run = tmp_path_factory.mktemp("run") / "run"
    cfg = PretrainConfig.from_dict(dict(model=TINY_MODEL, world=dict(preset="paper", events={"min_seconds": 0.1}),
                                        batch_size=2, steps=2, stats_clips=4, progress=False, seed=0)).resolved()
    assert pretrain(cfg, run, log=lambda msg: None).status == "finished"
    return run


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """Two classes of three short tones (a `--task folder` dataset, and files to embed)."""
    root = tmp_path_factory.mktemp("audio")
    t = np.arange(4000) / 16000
    for c, f in (("low", 250.0), ("high", 2500.0)):
        (root / c).mkdir()
        for i in range(3):
            sf.write(root / c / f"{i}.wav", (0.3 * np.sin(2 * np.pi * f * (1 + 0.02 * i) * t)).astype(np.float32),
                     16000)
    return root


def probe(audio: Path, out, *extra) -> list:
    return ["probe", "--task", "folder", "--data-root", audio, "--out", out, "--baselines", "handcrafted",
            "--no-pretrained", "--cache-dir", "none", "--quiet", *extra]


def temp_siblings(path: Path) -> list[str]:
    return [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]


def commands(out: Path, run: Path, audio: Path) -> dict[str, list]:
    """Every command with its output at ``out`` (cheap settings: the output is refused or fails first)."""
    return {
        "synth": [*SYNTH, "--out", out],
        "stats": [*STATS, "--out", out / "stats.json"],
        "embed": ["embed", audio, "--checkpoint", run, "--out", out / "emb", "--device", "cpu", "--no-progress"],
        "export": ["export", run, "--out", out],
        "probe": probe(audio, out),
        "probe --cache-dir": ["probe", "--task", "folder", "--data-root", audio, "--checkpoint", run, "--baselines",
                              "none", "--out", out.parent.parent / "probed", "--cache-dir", out / "cache", "--quiet"],
        "finetune": ["finetune", "--task", "folder", "--data-root", audio, "--checkpoint", run, "--recipe",
                     "fsdd-tiny", "--out", out, "--device", "cpu", "--quiet"],
        "analyze": ["analyze", "--checkpoint", run, "--out", out, "--no-real", "--no-baseline"],
        "pretrain": ["pretrain", *TINY_ARGS, "--out", out],
        "download": ["download", "fsdd", "--root", out],
    }


# ----------------------------------------------------------------------------- where nothing can be written
@pytest.mark.parametrize("command", ["synth", "stats", "embed", "export", "probe", "probe --cache-dir", "finetune",
                                     "analyze", "pretrain", "download"])
def test_an_output_under_a_file_is_refused_naming_it(faults, tmp_path, run, audio, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine\n")
    args = commands(blocker / "out", run, audio)[command]
    res = faults.cli(args, str(blocker / "out"), guard=[blocker, run])
    assert "a-file is a file" in res.stderr and res.rc == 1


@pytest.mark.parametrize("command", ["synth", "stats", "export", "pretrain", "download"])
def test_an_output_where_the_system_forbids_it_is_refused_naming_it(faults, run, audio, command):
    args = commands(Path("/proc/audiopg-test/out"), run, audio)[command]
    res = faults.cli(args, "/proc/audiopg-test", guard=[run])
    assert "cannot write" in res.stderr or "No such file" in res.stderr


def test_a_full_disk_names_the_file_and_leaves_the_old_output(faults, tmp_path, run, audio, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "synth"
    assert run_cli([*SYNTH, "--out", out]).rc == 0
    stats, emb = tmp_path / "stats.json", tmp_path / "emb"
    monkeypatch.setattr(audiopg_io.os, "fsync", full)  # the first write that reaches the disk fails
    res = faults.cli([*SYNTH, "--out", out, "--overwrite"], str(out), guard=[out])
    assert "No space left on device" in res.stderr and not temp_siblings(out)
    faults.cli([*STATS, "--out", stats], str(stats))
    faults.cli(["embed", audio, "--checkpoint", run, "--out", emb, "--device", "cpu", "--no-progress"], "emb.npy")
    faults.cli(["export", run, "--out", tmp_path / "model"], str(tmp_path / "model"), guard=[run])
    faults.cli(probe(audio, tmp_path / "probe"), str(tmp_path / "probe"))
    faults.cli(["pretrain", *TINY_ARGS, "--out", tmp_path / "r"], str(tmp_path / "r"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "synth"]  # nothing half-written left
    assert [p.name for p in (tmp_path / "r").iterdir()] == []  # the run: no temp file, no half config.json


def test_a_read_only_file_system_names_the_path(faults, tmp_path, run, audio, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(audiopg_io.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(audiopg_io.tempfile, "mkdtemp", read_only)
    for command in ("synth", "stats", "embed", "export", "probe"):
        res = faults.cli(commands(tmp_path / "out", run, audio)[command], str(tmp_path / "out"), guard=[run])
        assert "cannot write it (Read-only file system)" in res.stderr
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []


def test_a_full_disk_stops_a_download_at_once_naming_the_file(faults, tmp_path, monkeypatch):
    class Response(io.BytesIO):
        status, headers = 200, {"Content-Length": "5"}

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda req, timeout: Response(b"bytes"))
    monkeypatch.setattr(download, "open", lambda path, mode: open("/dev/full", mode), raising=False)
    monkeypatch.setattr(download.time, "sleep", lambda s: pytest.fail("a full disk is not worth a retry"))
    res = faults.cli(["download", "fsdd", "--root", tmp_path / "data", "--quiet"], str(tmp_path / "data"))
    assert ".part: cannot write it (No space left on device)" in res.stderr


# ----------------------------------------------------------------------------- reused folders
def test_synth_into_a_used_folder_needs_overwrite_then_replaces_it_whole(faults, tmp_path):
    out = tmp_path / "clips"
    assert run_cli([*SYNTH, "--n", "3", "--out", out]).rc == 0
    faults.cli([*SYNTH, "--out", out], [str(out), "--overwrite"], guard=[out])
    assert run_cli([*SYNTH, "--out", out, "--overwrite"]).rc == 0
    assert sorted(p.name for p in out.glob("clip_*.wav")) == ["clip_0.wav", "clip_1.wav"]  # no stale clip_2
    assert len((out / "factors.jsonl").read_text().splitlines()) == 2 and not temp_siblings(out)


def test_overwrite_never_replaces_a_folder_that_is_not_the_same_kind_of_output(faults, tmp_path, run, audio):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    for args in ([*SYNTH, "--out", mine], probe(audio, mine), ["export", run, "--out", mine],
                 ["analyze", "--checkpoint", run, "--out", mine], ["pretrain", *TINY_ARGS, "--out", mine]):
        faults.cli([*args, "--overwrite"], str(mine), guard=[mine])
    faults.cli(["ablate", "--variants", "paper", "--steps", "1", "--seeds", "1", "--out", mine], str(mine),
               guard=[mine])
    faults.api(lambda: run_curve(mine, budgets=(), steps=[1], data_root=tmp_path, finetune=False), str(mine),
               guard=[mine])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_probe_results_are_not_replaced_silently(faults, tmp_path, audio):
    out = tmp_path / "probe"
    assert run_cli(probe(audio, out)).rc == 0
    (out / "stale.png").write_bytes(b"old")
    faults.cli(probe(audio, out), [str(out), "--overwrite"], guard=[out])
    assert run_cli(probe(audio, out, "--overwrite")).rc == 0
    assert (out / "results.json").exists() and not (out / "stale.png").exists()


def test_finetune_leaves_no_stale_split_and_analyze_refuses_a_used_folder(faults, tmp_path, run, audio):
    out = tmp_path / "ft"
    finetune = [*commands(out, run, audio)["finetune"], "--set", "epochs=1", "--set", "folds=1",
                "--set", "clip_frames=32"]
    assert run_cli(finetune).rc == 0
    (out / "old-split").mkdir()  # as if an earlier recipe had more folds
    faults.cli(finetune, [str(out), "--overwrite"], guard=[out])
    faults.cli(commands(out, run, audio)["analyze"], [str(out), "--overwrite"], guard=[out])
    assert run_cli([*finetune, "--overwrite"]).rc == 0
    assert (out / "results.json").exists() and not (out / "old-split").exists()


def test_export_never_writes_into_a_run_folder(faults, tmp_path, run):
    faults.cli(["export", run, "--out", run, "--force"], [str(run), "run folder"], guard=[run])
    other = tmp_path / "other-run"
    other.mkdir()
    for name in ("config.json", "state.pt", "metrics.jsonl"):
        (other / name).write_bytes((run / name).read_bytes())
    faults.cli(["export", run, "--out", other, "--overwrite"], [str(other), "run folder"], guard=[other, run])


def test_export_replaces_a_model_folder_only_with_overwrite(faults, tmp_path, run):
    out = tmp_path / "model"
    assert run_cli(["export", run, "--out", out]).rc == 0
    (out / "extra.onnx").write_bytes(b"stale")
    faults.cli(["export", run, "--out", out], [str(out), "--overwrite"], guard=[out])
    assert run_cli(["export", run, "--out", out, "--force", "--name", "again"]).rc == 0  # --force: an alias
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "encoder.safetensors"]
    assert "again" in (out / "README.md").read_text()


def test_embed_and_stats_refuse_an_existing_file(faults, tmp_path, run, audio):
    emb = tmp_path / "emb"
    embed = ["embed", audio, "--checkpoint", run, "--out", emb, "--device", "cpu", "--no-progress"]
    assert run_cli(embed).rc == 0
    faults.cli(embed, [str(emb) + ".npy", "--overwrite"], guard=[tmp_path])
    assert run_cli([*embed, "--overwrite"]).rc == 0
    stats = tmp_path / "stats.json"
    stats.write_text("{}\n")
    faults.cli([*STATS, "--out", stats], [str(stats), "--overwrite"], guard=[stats])
    faults.cli([*STATS, "--out", tmp_path], [str(tmp_path), "is a folder"], guard=[tmp_path])


def test_pretrain_refuses_a_finished_run_unless_overwrite(faults, tmp_path):
    out = tmp_path / "r"
    assert run_cli(["pretrain", *TINY_ARGS, "--out", out]).rc == 0
    faults.cli(["pretrain", *TINY_ARGS, "--out", out], [str(out), "--resume", "--overwrite"], guard=[out])
    (out / "analysis").mkdir()
    assert run_cli(["pretrain", *TINY_ARGS, "--out", out, "--overwrite", "--seed", "3"]).rc == 0
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 3 and not (out / "analysis").exists()
    faults.cli(["pretrain", "--resume", out, "--overwrite"], "overwrite", guard=[out])


# ----------------------------------------------------------------------------- one file mode everywhere
def test_every_written_file_and_folder_has_the_usual_mode(tmp_path, run, audio):
    old = os.umask(0o022)
    try:
        outs = tmp_path / "outs"
        for args in ([*SYNTH, "--out", outs / "synth"], [*STATS, "--out", outs / "stats.json"],
                     ["embed", audio, "--checkpoint", run, "--out", outs / "emb", "--device", "cpu", "--no-progress"],
                     ["export", run, "--out", outs / "model"], probe(audio, outs / "probe"),
                     ["pretrain", *TINY_ARGS, "--out", outs / "run"]):
            res = run_cli(args)
            assert res.rc == 0, res.stderr
    finally:
        os.umask(old)
    tb = outs / "run" / "tb"  # TensorBoard's own files, when it is installed
    modes = {str(p.relative_to(outs)): oct(p.stat().st_mode & 0o777) for p in outs.rglob("*") if tb not in p.parents}
    want = {k: oct(0o755 if (outs / k).is_dir() else 0o644) for k in modes}
    assert modes == want
    assert {"synth/clip_0.wav", "emb.npy", "emb.csv", "model/encoder.safetensors", "probe/results.json",
            "run/state.pt", "run/encoder.safetensors", "stats.json", "model"} <= set(modes)
