"""Tests for benchmarks/transfer_curve.py (audiopg.experiments.curve): recipes, and mini curves end to end.

The mini curves pre-train a very small model (1 block, 32-wide, 32 frames x 32 mel bins, 8x8 patches, 0.32 s
clips) for 1.2 s of wall clock or 2-3 steps, and probe and fine-tune it on a small synthetic FSDD written here.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from fake_data import make_fsdd

from audiopg.core.errors import ConfigError
from audiopg.experiments.curve import PAPER, CurveRecipe, Point, parse_recipe

torch.set_num_threads(1)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer_curve.py"
TINY_MODEL = dict(num_frames=32, num_mel_bins=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                  decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
TINY_SETS = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
    "world.events.min_seconds=0.1", "stats_clips=8", "batch_size=4", "fit_steps=2",
]
TINY_FINETUNE = ["folds=1", "epochs=1", "max_steps=2", "clip_frames=32", "batch_size=8"]


def load_script():
    spec = importlib.util.spec_from_file_location("transfer_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["transfer_curve"] = module
    spec.loader.exec_module(module)
    return module




def curve(script, capsys, out: Path, data: Path, tmp: Path, *extra: str) -> tuple[int, str, str]:
    argv = ["--out", str(out), "--data-root", str(data), "--device", "cpu", "--threads", "1", "--no-progress",
            "--cache-dir", str(tmp / "cache"), *extra]
    for s in TINY_SETS:
        argv += ["--set", s]
    rc = script.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ----------------------------------------------------------------------------- recipes
def test_recipes_points_and_their_errors():
    r = parse_recipe("latent objective=latent masks_per_clip=4 'world.scene.sources_per_clip=[1, 1]' "
                     "probe.pool=meanstd probe.layer=concat")
    assert r == CurveRecipe("latent", ("objective=latent", "masks_per_clip=4", "world.scene.sources_per_clip=[1, 1]"),
                            "concat", "meanstd")
    assert parse_recipe("deep probe.layer=2").layer == 2 and parse_recipe("paper") == PAPER
    assert PAPER.layer is None and PAPER.pool is None  # run_curve: what the runs record (embedding_layer/_pool)
    for text, key in (("x seed=3", "seed"), ("x minutes=2", "minutes"), ("x model.preset=base", "model.preset"),
                      ("x probe.norm=1", "probe.norm"), ("x lr", "recipe"), ("handcrafted", "recipe"),
                      ("a/b", "recipe"), ("", "recipe")):
        with pytest.raises(ConfigError) as err:
            parse_recipe(text)
        assert err.value.key == key, text
    assert [Point(minutes=5).name, Point(minutes=0.5).name, Point(steps=612, matched=5).name] == [
        "min5", "min0.5", "steps612"]

    script = load_script()
    fast = parse_recipe("fast lr=0.002")
    # the step-matching reference joins the recipes first when its step counts are needed
    assert script.select_recipes(["fast lr=0.002"], None, "paper", matching=True) == [PAPER, fast]
    assert script.select_recipes(["fast lr=0.002"], None, "paper", matching=False) == [fast]
    assert script.select_recipes([], None, "paper", matching=True) == [PAPER]
    assert script.select_recipes(["fast lr=0.002", "slow lr=0.0001"], "slow,paper", None, matching=True) == [
        parse_recipe("slow lr=0.0001"), PAPER]
    with pytest.raises(ConfigError, match="unknown recipe 'latent'"):
        script.select_recipes(["fast lr=0.002"], "latent", "paper", matching=True)


def test_bad_settings_stop_before_any_run(tmp_path, capsys):
    script = load_script()
    data = tmp_path / "data"
    make_fsdd(data)
    rc, _, err = curve(script, capsys, tmp_path / "c", data, tmp_path, "--budgets", "none", "--steps", "2",
                       "--recipe", "odd probe.pool=median", "--recipes", "odd")
    assert rc == 2 and "probe.pool" in err and "median" in err
    rc, _, err = curve(script, capsys, tmp_path / "c", data, tmp_path, "--budgets", "none", "--steps", "2",
                       "--finetune-set", "seed=3")
    assert rc == 2 and "seed" in err
    assert not (tmp_path / "c" / "paper").exists()


# ----------------------------------------------------------------------------- mini curves
def test_mini_curve_step_matched_probed_fine_tuned_and_skipped_when_rerun(tmp_path, capsys):
    script = load_script()
    data, out = tmp_path / "data", tmp_path / "curve"
    make_fsdd(data)
    args = ["--budgets", "0.02", "--recipe", "fast lr=0.002", "--largest-seeds", "1", "--tasks",
            "fsdd-own,fsdd-loso"] + [a for s in TINY_FINETUNE for a in ("--finetune-set", s)]
    rc, stdout, err = curve(script, capsys, out, data, tmp_path, *args)
    assert rc == 0, err

    summary = json.loads((out / "curve.json").read_text())
    assert summary["complete"] and summary["settings"]["reference"] == "paper"
    paper_steps = summary["runs"]["paper"]["min0.02"]["seed0"]["steps"]
    matched = f"steps{paper_steps}"
    assert set(summary["results"]["paper"]) == {"min0.02"}
    assert list(summary["results"]["fast"]) == ["min0.02", matched]  # timed first, then by steps
    row = summary["results"]["fast"][matched]
    assert row["matched"] == 0.02 and row["steps"] == paper_steps and row["minutes"] is None
    for recipe, point in (("paper", "min0.02"), ("fast", "min0.02"), ("fast", matched)):
        run = summary["runs"][recipe][point]["seed0"]
        assert run["status"] == "trained" and (out / recipe / point / "seed0" / "encoder.safetensors").exists()
        load = run["load"]
        assert load["sessions"] == 1 and load["start"] >= 0 and load["end"] >= 0
        assert json.loads((out / recipe / point / "seed0" / "loadavg.json").read_text())["sessions"][0]["status"] == \
            "finished"
        for task in ("fsdd-own", "fsdd-loso"):
            r = summary["results"][recipe][point]["tasks"][task]
            assert r["n_seeds"] == 1 and 0.0 <= r["mean"] <= 1.0 and r["std"] == 0.0
    # fine-tuning at the largest budget only (timed runs), on FSDD leave-one-speaker-out, against random init
    for recipe in ("paper", "fast"):
        ft = summary["results"][recipe]["min0.02"]["finetune"]
        assert set(ft) == {"fsdd-loso"}
        f = ft["fsdd-loso"]
        assert f["minus_random"]["mean"] == pytest.approx(f["finetuned"]["mean"] - f["random"]["mean"])
        res = json.loads((out / recipe / "min0.02" / "seed0" / "finetune" / "fsdd-loso" / "results.json").read_text())
        assert set(res["models"]) == {"finetuned", "random"} and res["recipe"]["name"] == "fsdd-tiny"
        assert res["recipe"]["head_init"] == "probe" and res["recipe"]["max_steps"] == 2
    assert summary["results"]["fast"][matched]["finetune"] == {}
    # references: handcrafted once, random init once per recipe
    assert set(summary["handcrafted"]) == {"fsdd-own", "fsdd-loso"}
    assert set(summary["random"]) == {"paper", "fast"}
    # lr changes no untrained weight: fast shares paper's random-init reference instead of probing it again
    assert all(r["shared_with"] == "paper" for r in summary["random"]["fast"].values())
    assert not (out / "fast" / "random").exists() and (out / "paper" / "random" / "probe" / "fsdd-own").is_dir()
    # seed-paired differences against paper: at the same minutes and at the same steps
    kinds = {(d["point"], d["against"], d["kind"]) for d in summary["differences"]}
    assert kinds == {("min0.02", "min0.02", "same minutes"), (matched, "min0.02", "same steps")}

    md = (out / "curve.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| recipe | budget | steps | fsdd-own (%) | fsdd-loso (%) | fine-tuned fsdd-loso")
    assert [r.split(" | ")[0][2:] for r in rows[1:6]] == ["paper", "fast", "fast", "paper, random init (± over folds)",
                                                         "fast, random init (± over folds)"]
    assert f"| fast | {paper_steps} steps (paper at 0.02 min) | {paper_steps} |" in md
    assert "→" in rows[1] and "## Against `paper`" in md and "fine-tuned − random init" in md
    png = (out / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    assert stdout.strip().splitlines()[-1].startswith("| handcrafted (± over folds) |")  # the table is printed last

    # again: nothing is trained, probed or fine-tuned a second time
    files = sorted(out.rglob("*.safetensors")) + sorted(out.rglob("results.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    rc, stdout2, err = curve(script, capsys, out, data, tmp_path, *args)
    assert rc == 0, err
    assert "plan:" not in err and err.count("reusing") == 3
    assert {p: p.stat().st_mtime_ns for p in files} == before
    again = json.loads((out / "curve.json").read_text())
    runs = [again["runs"][r][p]["seed0"] for r in again["runs"] for p in again["runs"][r]]
    assert {r["status"] for r in runs} == {"reused"}
    assert all(s["reused"] for r in runs for s in list(r["scores"].values()) + list(r["finetune"].values()))
    assert again["results"] == summary["results"] and stdout2 == stdout

    # other settings in the same folder are refused before anything runs, naming the key
    rc, _, err = curve(script, capsys, out, data, tmp_path, *args, "--set", "lr=0.01")
    assert rc == 2 and "lr" in err


def test_explicit_steps_seeds_and_budget_limits(tmp_path, capsys):
    script = load_script()
    data, out = tmp_path / "data", tmp_path / "curve"
    make_fsdd(data)
    rc, stdout, err = curve(script, capsys, out, data, tmp_path, "--budgets", "none", "--steps", "3,2",
                            "--tasks", "fsdd-own", "--no-finetune")
    assert rc == 0, err
    summary = json.loads((out / "curve.json").read_text())
    assert summary["settings"]["finetune"] is None and summary["settings"]["steps_of"] is None
    rows = summary["results"]["paper"]
    assert list(rows) == ["steps2", "steps3"]
    assert [rows[p]["n_seeds"] for p in rows] == [1, 2]  # two seeds at the largest budget
    assert sorted(p.name for p in (out / "paper" / "steps3").iterdir()) == ["seed0", "seed1"]
    assert rows["steps3"]["steps"] == 3 and rows["steps3"]["tasks"]["fsdd-own"]["n_seeds"] == 2
    assert "| paper | 3 steps | 3 |" in stdout and "esc50" not in stdout
    # no probe.layer/pool in the recipe: what the runs record as their embedding (concat, meanstd), random init too
    assert (summary["settings"]["recipes"]["paper"]["layer"], summary["settings"]["recipes"]["paper"]["pool"]) == (
        "concat", "meanstd")
    for folder in (out / "paper" / "steps3" / "seed1", out / "paper" / "random"):
        res = json.loads((folder / "probe" / "fsdd-own" / "results.json").read_text())
        assert (res["options"]["layer"], res["options"]["pool"]) == ("concat", "meanstd"), folder
    config = json.loads((out / "paper" / "steps3" / "seed1" / "config.json").read_text())
    assert config["train"]["embedding_pool"] == "meanstd"

    # a recipe that records another default embedding is probed that way
    rc, _, err = curve(script, capsys, tmp_path / "curve2", data, tmp_path, "--budgets", "none", "--steps", "2",
                       "--tasks", "fsdd-own", "--no-finetune", "--seeds", "1", "--largest-seeds", "1",
                       "--recipe", "plain embedding_pool=mean embedding_layer=0", "--recipes", "plain")
    assert rc == 0, err
    res = json.loads((tmp_path / "curve2" / "plain" / "steps2" / "seed0" / "probe" / "fsdd-own" / "results.json")
                     .read_text())
    assert (res["options"]["layer"], res["options"]["pool"]) == (0, "mean")
