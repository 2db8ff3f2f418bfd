"""Tests for audiopg.api.xares: the rules of X-ARES's encoder check (xares/audio_encoder_checker.py) and of its
frame-level tasks (labels every hop_size_in_ms, clips up to 10 minutes); the official check runs when xares is
importable (docs/suites.md: ``pip install --no-deps xares loguru``)."""
from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import pytest
import torch
from test_hear import save_tiny_model, white_noise

from audiopg.api import hear
from audiopg.api.xares import XaresEncoder
from audiopg.model.encoder import Encoder

torch.set_num_threads(1)

SR = 16000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("xares_run"))


@pytest.fixture(scope="module")
def encoder(model_dir):
    return XaresEncoder(model_dir)


def test_attributes_follow_the_suite(encoder, model_dir):
    assert type(encoder).__name__.endswith("Encoder") and isinstance(encoder, torch.nn.Module)
    assert isinstance(encoder.sampling_rate, int) and encoder.sampling_rate == SR
    assert isinstance(encoder.output_dim, int) and encoder.output_dim == 24
    assert isinstance(encoder.hop_size_in_ms, float) and encoder.hop_size_in_ms == 40.0
    assert encoder.to("cpu") is encoder
    from_file = XaresEncoder(model_dir / "encoder.safetensors", layer="concat", batch_size=4)
    assert (from_file.output_dim, from_file.layer, from_file.batch_size) == (48, "concat", 4)
    assert XaresEncoder(Encoder.from_pretrained(model_dir)).output_dim == 24


@pytest.mark.parametrize("asked, hop", [(50, 40.0), (40, 40.0), (80.0, 80.0), (100, 80.0), (160, 160.0),
                                        (1000, 160.0), (20, 20.0), (10, 10.0)])
def test_hop_is_the_finest_grid_step_not_above_the_request(model_dir, asked, hop):
    enc = XaresEncoder(model_dir, hop_size_in_ms=asked)
    assert enc.hop_size_in_ms == hop
    out = enc(white_noise(1, 3.2, seed=1))
    assert out.shape == (1, round(3200 / hop), 24)


def test_bad_settings_are_refused(model_dir):
    with pytest.raises(ValueError, match="hop_size_in_ms"):
        XaresEncoder(model_dir, hop_size_in_ms=5)
    with pytest.raises(ValueError, match="hop_size_in_ms"):
        XaresEncoder(model_dir, hop_size_in_ms="40")
    with pytest.raises(ValueError, match="'concat', not 'all'"):
        XaresEncoder(model_dir, layer="all")
    with pytest.raises(ValueError, match="layer"):
        XaresEncoder(model_dir, layer=5)
    with pytest.raises(ValueError, match="batch_size"):
        XaresEncoder(model_dir, batch_size=0)


def test_the_checkers_sample_batch(encoder):
    """What check_audio_encoder feeds and asserts: randn(2, 50000) -> a 3-D tensor, batch 2, last axis output_dim."""
    sample = torch.randn(2, 50000, generator=torch.Generator().manual_seed(0))
    out = encoder(sample)
    assert isinstance(out, torch.Tensor) and out.ndim == 3
    assert out.shape == (2, 78, encoder.output_dim)  # 3125 ms / 40 ms, as the checker's own example says
    assert out.dtype == torch.float32 and out.device == sample.device
    assert torch.isfinite(out).all()


def test_the_official_checker_passes(encoder):
    checker = pytest.importorskip("xares.audio_encoder_checker",
                                  reason="xares not installed (pip install --no-deps xares loguru)")
    assert checker.check_audio_encoder(encoder) is True


def test_xares_finds_and_builds_the_encoder_of_a_user_file(tmp_path, monkeypatch, model_dir):
    """xares.run imports the file as a module, takes its one name ending in "Encoder" and calls it without arguments."""
    (tmp_path / "audiopg_encoder.py").write_text(
        "import audiopg.api.xares as audiopg_xares\n\n\n"
        "class AudioPGEncoder(audiopg_xares.XaresEncoder):\n"
        "    def __init__(self):\n"
        f"        super().__init__({str(model_dir)!r})\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from xares.utils import attr_from_py_path
    except ImportError:
        def attr_from_py_path(path: str, endswith: str) -> type:  # the suite's rule, as in xares/utils.py
            module = importlib.import_module(path.replace("/", ".").removesuffix(".py"))
            names = [name for name in dir(module) if name.endswith(endswith)]
            assert len(names) == 1, names
            return getattr(module, names[0])
    try:
        enc = attr_from_py_path("audiopg_encoder.py", endswith="Encoder")()
    finally:
        sys.modules.pop("audiopg_encoder", None)
    assert type(enc).__name__ == "AudioPGEncoder" and enc.output_dim == 24
    assert enc(torch.zeros(1, SR)).shape == (1, 25, 24)


@pytest.mark.parametrize("samples", [1, 100, 400, 8000, 17120, 31680, 40960, 50000, 160000, 480000])
def test_frames_follow_the_hop_from_very_short_to_long(encoder, samples):
    audio = white_noise(2, samples / SR, seed=2)
    out = encoder(audio)
    frames = samples / SR * 1000 / encoder.hop_size_in_ms
    assert out.shape[0] == 2 and out.shape[2] == encoder.output_dim
    assert out.shape[1] >= 1 and abs(out.shape[1] - frames) < 1, (out.shape, frames)
    assert out.shape[1] in (max(1, math.floor(frames)), math.ceil(frames))
    assert torch.isfinite(out).all()


def test_frames_are_the_hear_timestamp_embeddings_in_their_label_slots(encoder, model_dir):
    """Frame t is HEAR's embedding stamped inside [t, t + 1) * hop: where X-ARES puts frame t's labels."""
    audio = white_noise(2, 4.3, seed=3)
    out = encoder(audio)
    emb, ts = hear.get_timestamp_embeddings(audio, hear.load_model(model_dir))
    torch.testing.assert_close(out, emb, atol=0, rtol=0)
    t = ts[0].double().numpy()
    slot = np.arange(len(t)) * encoder.hop_size_in_ms
    assert (slot <= t).all() and (t < slot + encoder.hop_size_in_ms).all()


def test_batch_equals_items_and_calls_are_deterministic(encoder):
    audio = white_noise(3, 4.0, seed=4)
    batch = encoder(audio)
    assert torch.equal(batch, encoder(audio))
    for i in range(3):
        torch.testing.assert_close(encoder(audio[i:i + 1])[0], batch[i], atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder(audio[1]), batch[1:2], atol=1e-5, rtol=0)  # a 1-D clip is a batch of one


def test_frames_follow_the_sound(encoder):
    audio = torch.zeros(1, 2 * SR)
    audio[0, SR:SR + 4000] = white_noise(1, 0.25, seed=5)[0]  # a burst at 1.0-1.25 s
    out = encoder(audio)[0]
    hop = encoder.hop_size_in_ms
    before, during = out[: int(700 / hop)], out[int(1050 / hop):int(1200 / hop)]
    assert (during.mean(0) - before.mean(0)).norm() > 0.1 * before.norm(dim=1).mean()


def test_ten_minutes_in_one_call(encoder):
    """X-ARES feeds whole clips of up to 10 minutes: windows go through the model batch_size at a time."""
    g = torch.Generator().manual_seed(6)
    audio = torch.randn(1, 600 * SR, generator=g) * 0.1
    out = encoder(audio)
    assert out.shape == (1, 15000, encoder.output_dim)
    assert torch.isfinite(out).all()
    assert out[0].std(dim=0).mean() > 0  # not one repeated vector


def test_bad_audio_is_rejected(encoder):
    with pytest.raises(TypeError, match="torch.Tensor"):
        encoder(np.zeros((1, SR), np.float32))
    with pytest.raises(ValueError, match="batch, samples"):
        encoder(torch.zeros(1, 1, SR))
    with pytest.raises(ValueError, match="batch, samples"):
        encoder(torch.zeros(2, 0))
    with pytest.raises(ValueError, match="NaN"):
        encoder(torch.full((1, SR), float("nan")))
