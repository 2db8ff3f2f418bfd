"""Tests for ``audiopg ablate``: the family -> world-override table, variant names, and a mini ablation.

The mini ablation pre-trains a very small model (1 block, 32-wide, 32 frames x 32 mel bins, 8x8 patches,
0.32 s clips) for 2 steps per run, and probes it on a small synthetic FSDD written by the test.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_data import make_fsdd

from audiopg.cli import main as cli
from audiopg.core.errors import ConfigError
from audiopg.experiments.ablate import (
    FAMILY_OVERRIDES,
    check_variant,
    default_variants,
    parse_families,
    parse_variant,
    run_ablation,
    run_config,
)
from audiopg.experiments.transfer import parse_tasks
from audiopg.synth import load_world_config
from audiopg.train.pretrain import pretrain

torch.set_num_threads(1)

TINY_MODEL = dict(num_frames=32, num_mel_bins=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                  decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
TINY_SETS = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
    "world.events.min_seconds=0.1", "stats_clips=8", "batch_size=4",
]
TEXTURES = ("granular", "modulated_noise", "glide")
FAMILY_SOURCES = {"voice": ("voice",), "modal": ("modal",), "string": ("string",), "textures": TEXTURES}


# ----------------------------------------------------------------------------- the mapping
@pytest.mark.parametrize("family", list(FAMILY_OVERRIDES))
def test_every_family_switches_its_part_of_the_rich_world_off(family):
    base = load_world_config("rich")
    world = load_world_config("rich", list(FAMILY_OVERRIDES[family]))
    gone = FAMILY_SOURCES.get(family, ())
    for name, src in world.sources.items():
        assert src.enabled == (name not in gone), name
        assert base.sources[name].enabled, f"{name} is on in the rich preset"
    if family == "scene":
        assert tuple(base.scene.sources_per_clip) != (1, 1)
        assert tuple(world.scene.sources_per_clip) == (1, 1)
    else:
        assert world.scene == base.scene
    if family == "room":
        assert base.room.enabled and base.distance.enabled
        assert not world.room.enabled and not world.distance.enabled
    else:
        assert world.room.enabled and world.distance.enabled
    assert world.to_dict() != base.to_dict()


def test_variants_reach_the_pretraining_world():
    for v in default_variants("rich"):
        check_variant(v)
        world = run_config(v, 0, steps=1, overrides=TINY_SETS).world_config()
        expect = load_world_config(v.preset, ["seconds=0.32", "events.min_seconds=0.1"] + v.world_overrides())
        assert world == expect, v.name
    names = [v.name for v in default_variants("rich")]
    assert names == ["paper", "rich"] + [f"rich-no-{f}" for f in FAMILY_OVERRIDES]


def test_variant_names_and_errors():
    assert parse_variant("rich-no-voice").without == ("voice",)
    v = parse_variant("no-room+scene", "rich")
    assert (v.name, v.preset, v.without) == ("rich-no-room+scene", "rich", ("room", "scene"))
    assert parse_variant("paper").without == ()
    assert parse_tasks("esc50-part,fsdd-own") == ["esc50", "fsdd-own"]
    with pytest.raises(ConfigError, match="unknown family"):
        parse_families("voice,reverb")
    with pytest.raises(ConfigError, match="unknown family"):
        parse_variant("rich-no-wind")
    with pytest.raises(ConfigError, match="already off"):
        check_variant(parse_variant("paper-no-room"))
    with pytest.raises(ConfigError, match="unknown world preset"):
        check_variant(parse_variant("lush"))
    with pytest.raises(ConfigError, match="world.preset"):
        run_config(parse_variant("rich"), 0, steps=1, overrides=["world.preset=paper"])


# ----------------------------------------------------------------------------- a mini ablation


def ablate(out: Path, data: Path, tmp: Path, capsys, *extra: str) -> tuple[int, str]:
    argv = ["ablate", "--variants", "paper,rich-no-voice", "--seeds", "1", "--steps", "2", "--out", str(out),
            "--data-root", str(data), "--device", "cpu", "--threads", "1", "--no-progress",
            "--cache-dir", str(tmp / "cache"), *extra]
    for s in TINY_SETS:
        argv += ["--set", s]
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_mini_ablation_writes_the_table_and_resumes(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "abl"
    make_fsdd(data)
    rc, text = ablate(out, data, tmp_path, capsys)
    assert rc == 0, text
    assert "esc50" in text and "skipped" in text  # no ESC-50 data in the fixture
    assert "== run 1/2: paper seed 0" in text and "== run 2/2: rich-no-voice seed 0" in text

    summary = json.loads((out / "ablation.json").read_text())
    assert summary["complete"]
    assert list(summary["results"]) == ["paper", "rich-no-voice"]
    assert summary["tasks"]["esc50"]["skipped"]
    for name in ("paper", "rich-no-voice"):
        run = summary["runs"][name]["seed0"]
        assert run["status"] == "trained" and run["steps"] == 2
        assert run["load"]["sessions"] == 1 and run["load"]["start"] >= 0.0 and run["load"]["end"] >= 0.0
        assert (out / name / "seed0" / "encoder.safetensors").exists()
        for task in ("fsdd-own", "fsdd-loso"):
            r = summary["results"][name][task]
            assert r["n_seeds"] == 1 and 0.0 <= r["mean"] <= 1.0 and r["std"] == 0.0
            assert (out / name / "seed0" / "probe" / task / "results.json").exists()
    assert set(summary["handcrafted"]) == {"fsdd-own", "fsdd-loso"}
    world = json.loads((out / "rich-no-voice" / "seed0" / "config.json").read_text())["world"]
    assert world["sources"]["voice"]["enabled"] is False and world["sources"]["modal"]["enabled"] is True

    md = (out / "ablation.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| variant | fsdd-own (%) | fsdd-loso (%) |")
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == ["paper", "rich-no-voice", "handcrafted (± over folds)"]
    assert all("±" in r for r in rows[1:])
    assert "skipped" in md
    png = (out / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # again: every run and probe is reused, nothing is retrained
    encoder = out / "paper" / "seed0" / "encoder.safetensors"
    before = (encoder.stat().st_mtime_ns, (out / "paper" / "seed0" / "metrics.jsonl").read_text())
    rc, text = ablate(out, data, tmp_path, capsys)
    assert rc == 0, text
    assert "plan:" not in text and "reusing" in text
    again = json.loads((out / "ablation.json").read_text())
    assert {again["runs"][n]["seed0"]["status"] for n in again["runs"]} == {"reused"}
    assert all(s["reused"] for n in again["runs"] for s in again["runs"][n]["seed0"]["scores"].values())
    assert again["results"] == summary["results"]
    assert (encoder.stat().st_mtime_ns, (out / "paper" / "seed0" / "metrics.jsonl").read_text()) == before

    # asking for other settings in the same folder is refused, naming the key
    rc, text = ablate(out, data, tmp_path, capsys, "--set", "lr=0.01")
    assert rc == 2 and "lr" in text


def test_unfinished_run_is_resumed(tmp_path):
    data, out = tmp_path / "data", tmp_path / "abl"
    make_fsdd(data)
    variant = parse_variant("paper")
    config = run_config(variant, 0, steps=2, overrides=TINY_SETS, device="cpu", progress=False)
    run_dir = out / "paper" / "seed0"
    stopped = pretrain(config, run_dir, on_step=lambda trainer, step, loss: trainer.request_stop(),
                       log=lambda msg: None)
    assert stopped.status == "interrupted" and stopped.step == 1
    assert not (run_dir / "encoder.safetensors").exists()
    logs: list[str] = []
    summary = run_ablation(out, variants=[variant], seeds=1, steps=2, data_root=data, tasks=["fsdd-own"],
                           overrides=TINY_SETS, device="cpu", cache_dir=tmp_path / "cache", progress=False,
                           log=logs.append)
    run = summary["runs"]["paper"]["seed0"]
    assert run["status"] == "resumed" and run["steps"] == 2
    assert run["load"]["sessions"] == 1  # the session the ablation ran (the first ran outside it)
    assert any("resuming" in line for line in logs)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert set(summary["results"]["paper"]) == {"fsdd-own"}
    assert list(summary["handcrafted"]) == ["fsdd-own"]


def test_paired_differences_and_steps_in_the_summary():
    from audiopg.experiments.ablate import _aggregate, format_markdown, parse_variant

    variants = [parse_variant(n) for n in ("paper", "rich", "rich-no-voice")]
    scores = {"paper": (0.50, 0.60), "rich": (0.70, 0.66), "rich-no-voice": (0.65, 0.66)}
    steps = {"paper": (100, 102), "rich": (80, 81), "rich-no-voice": (90, 90)}
    summary = {
        "settings": {"seeds": [0, 1], "minutes": 1.0, "steps": None, "model_preset": "tiny",
                     "probe": {"layer": -1, "pool": "mean"}, "variants": {}, "overrides": [], "data_root": "d"},
        "tasks": {"fsdd-own": {"metric": "accuracy", "num_items": 10, "data": "d", "protocol": "p"},
                  "esc50": {"skipped": "no data"}},
        "runs": {n: {f"seed{k}": {"steps": steps[n][k], "scores": {"fsdd-own": {"mean": scores[n][k]}}}
                     for k in range(2)} for n in scores},
        "handcrafted": {"fsdd-own": {"mean": 0.9, "std": 0.0}},
        "complete": True,
    }
    _aggregate(summary, variants, ["fsdd-own"])
    assert summary["steps"] == {"paper": 101, "rich": 80, "rich-no-voice": 90}  # 80.5 rounds to even
    diffs = {(d["a"], d["b"]): d["tasks"]["fsdd-own"] for d in summary["differences"]}
    assert set(diffs) == {("rich", "rich-no-voice"), ("rich", "paper")}
    assert diffs["rich", "rich-no-voice"]["seeds"] == pytest.approx([0.05, 0.0])
    assert diffs["rich", "paper"]["mean"] == pytest.approx(0.13) and diffs["rich", "paper"]["std"] == pytest.approx(0.07)

    md = format_markdown(summary)
    assert "## What each part buys" in md
    assert "| voice (`rich` − `rich-no-voice`) | +2.5 ± 2.5 (n=2) |" in md
    assert "| `rich` − `paper` | +13.0 ± 7.0 (n=2) |" in md
    rows = [line for line in md.splitlines() if line.startswith("| paper |")]
    assert rows[0].endswith("| 101 |")


def test_no_differences_table_without_a_pair():
    from audiopg.experiments.ablate import (
        format_differences,
        paired_differences,
        parse_variant,
    )

    summary = {"runs": {"paper": {}}, "tasks": {}}
    assert paired_differences(summary, [parse_variant("paper")], []) == []
    assert format_differences({"differences": [], "tasks": {}}) == []
    # a metric other than accuracy keeps its own scale, with 3 decimals
    diffs = [{"a": "rich", "b": "paper", "label": "`rich` − `paper`",
              "tasks": {"fsd50k": {"mean": 0.0123, "std": 0.0046, "n_seeds": 2}}}]
    lines = format_differences({"differences": diffs, "tasks": {"fsd50k": {"metric": "mAP"}}})
    assert lines[-1] == "| `rich` − `paper` | +0.012 ± 0.005 (n=2) |"
