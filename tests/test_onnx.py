"""The ONNX graph: exported from `audiopg export --onnx`, run by onnxruntime on the CPU, equal to Encoder.embed."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from test_encoder import make_checkpoint

from audiopg.api.onnx_export import (
    INPUT_NAMES,
    OUTPUT_NAME,
    export_onnx,
    onnx_inputs,
    run_onnx,
)
from audiopg.audio.io import load_audio
from audiopg.cli.main import main
from audiopg.eval.datasets import default_data_root
from audiopg.model.encoder import Encoder

for module in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(module, reason=f"{module} is not installed: the onnx extra (pip install audiopg[onnx])")
import onnx  # noqa: E402

torch.set_num_threads(1)
SR = 16000
TOL = 1e-4
# clip lengths in samples: shorter than a window, exactly one (0.64 s), a last window off the hop grid, on it
LENGTHS = (3000, 10480, 33077, 18320)


def random_clips(lengths=LENGTHS, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 0.3).astype(np.float32) for n in lengths]


def check(encoder: Encoder, path, clips, sample_rate: int = SR, **pooling) -> None:
    logmel, frames = onnx_inputs(encoder, clips, sample_rate)
    got = run_onnx(path, logmel, frames)
    want = encoder.embed(clips, sample_rate, **pooling).scene.numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny run exported with `audiopg export --onnx` into its model folder."""
    run = tmp_path_factory.mktemp("run")
    make_checkpoint(run)
    out = run.parent / (run.name + "-model")
    assert main(["export", str(run), "--out", str(out), "--onnx", str(out / "encoder.onnx")]) == 0
    return out


def test_the_graph_has_dynamic_batch_and_frame_axes(model):
    graph = onnx.load(model / "encoder.onnx").graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES) and [o.name for o in graph.output] == [OUTPUT_NAME]
    logmel, frames = (i.type.tensor_type.shape.dim for i in graph.input)
    assert logmel[0].dim_param and logmel[1].dim_param and logmel[2].dim_value == 128
    assert frames[0].dim_param == logmel[0].dim_param  # one batch axis
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 32


def test_random_clips_of_any_length_and_batch_match_pytorch(model):
    encoder = Encoder.from_pretrained(model)
    clips = random_clips()
    check(encoder, model / "encoder.onnx", clips)  # four lengths in one batch
    check(encoder, model / "encoder.onnx", clips[2:3])  # a batch of one
    check(encoder, model / "encoder.onnx", random_clips((52000,) * 3, seed=1))  # equal lengths, 5 windows each


def test_another_pooling_exports_and_matches(model, tmp_path):
    encoder = Encoder.from_pretrained(model)
    path = export_onnx(encoder, tmp_path / "other.onnx", layer="concat", pool="meanstd")
    check(encoder, path, random_clips(), layer="concat", pool="meanstd")


def test_oblong_patches_export_and_match(tmp_path):
    make_checkpoint(tmp_path, model={"patch_size": 32, "patch_frames": 8})  # 80 ms columns, 4 frequency rows
    encoder = Encoder.from_pretrained(tmp_path)
    path = export_onnx(encoder, tmp_path / "oblong.onnx", layer="concat", pool="meanstd")
    check(encoder, path, random_clips(), layer="concat", pool="meanstd")


def test_real_clips_match_pytorch(model):
    root = default_data_root()
    fsdd = sorted((root / "fsdd" / "recordings").glob("*.wav"))[:4]
    esc = sorted((root / "esc50-fold4" / "audio").glob("*.wav"))[:2]
    if not (fsdd and esc):
        pytest.skip(f"no real clips under {root} (FSDD and ESC-50 from the shared data; set AUDIOPG_DATA)")
    encoder = Encoder.from_pretrained(model)
    for files, rate in ((fsdd, 8000), (esc, SR)):  # FSDD is resampled from 8 kHz on the way in
        clips = [load_audio(f, rate) for f in files]
        check(encoder, model / "encoder.onnx", clips, rate)


def test_bad_onnx_requests_fail_before_any_work(model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m"
    assert main(["export", str(model), "--out", str(out), "--onnx", str(tmp_path / "graph.txt")]) == 2
    assert "--onnx: " in capsys.readouterr().err and not out.exists()
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", str(model), "--out", str(out), "--onnx", str(tmp_path / "g.onnx")]) == 2
    assert "pip install audiopg[onnx]" in capsys.readouterr().err and not out.exists()
