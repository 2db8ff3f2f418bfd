"""TensorBoard (the tensorboard extra): a run logs loss, lr, throughput and gradient norm per step and the
reconstruction figure at the end, equal to what metrics.jsonl and reconstructions.png hold."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from test_train import quiet, tiny

from audiopg.train import metrics
from audiopg.train.pretrain import pretrain
from audiopg.train.run_dir import METRICS_FILE, RECON_FILE, TB_DIR

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install audiopg[tensorboard])")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

torch.set_num_threads(1)


def test_a_run_logs_scalars_and_the_reconstruction_figure(tmp_path):
    run = tmp_path / "run"
    assert pretrain(tiny(steps=4), run, log=quiet).status == "finished"
    events = EventAccumulator(str(run / TB_DIR), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    lines = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    for tag, key in (("loss", "loss"), ("lr", "lr"), ("clips_per_s", "clips_per_s"), ("grad_norm", "grad_norm")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2, 3, 4], tag
        np.testing.assert_allclose([e.value for e in logged], [r[key] for r in lines], rtol=1e-2, err_msg=tag)
    (image,) = events.Images("reconstructions")
    assert image.step == 4 and image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    assert (image.width, image.height) == (960, 752)  # the figure of reconstructions.png, 80 dpi
    assert (run / RECON_FILE).is_file()


def test_without_the_extra_a_run_writes_no_tensorboard_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    assert metrics.open_tensorboard(tmp_path / "tb") is None
    run = tmp_path / "run"
    assert pretrain(tiny(steps=2), run, log=quiet).status == "finished"
    assert (run / METRICS_FILE).is_file() and not (run / TB_DIR).exists()
