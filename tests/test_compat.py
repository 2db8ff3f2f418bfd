"""Run folders written before the package layout moved (tests/data/run-2026-11-26) still load and resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from audiopg import Encoder
from audiopg.train.config import PretrainConfig
from audiopg.train.pretrain import pretrain

OLD = Path(__file__).parent / "data" / "run-2026-11-26"
REFERENCE = json.loads((OLD / "reference.json").read_text())


def metrics(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_an_old_model_folder_loads_and_embeds_as_before():
    enc = Encoder.from_pretrained(OLD / "full")
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    got = enc.embed(x, 16000).scene
    torch.testing.assert_close(got, torch.tensor(REFERENCE["embedding"]), rtol=1e-4, atol=1e-4)


def test_an_old_interrupted_run_resumes_to_the_same_losses(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD / "interrupted", run)
    config = PretrainConfig.from_dict(json.loads((run / "config.json").read_text())["train"]).resolved()
    result = pretrain(config, run, resume=True, log=lambda msg: None)
    assert result.status == "finished" and result.step == 6
    assert metrics(run) == pytest.approx(REFERENCE["losses"], abs=1e-4)
    assert (run / "encoder.safetensors").exists()
