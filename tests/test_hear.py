"""Tests for audiopg.api.hear: hear-baseline's tests and every check of the HEAR 2021 validator (hearvalidator
2021.0.2 and 2021.0.6, hearvalidator/validate.py); the official validator runs when it is importable (it needs
tensorflow, docs/suites.md)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audiopg.api import hear
from audiopg.audio.fbank import FbankConfig
from audiopg.core.config import to_dict
from audiopg.core.errors import CheckpointError
from audiopg.model import ModelConfig, ViTEncoder
from audiopg.model.checkpoint import save_encoder
from audiopg.synth import load_world_config

torch.set_num_threads(1)

# the tiny preset's 2.56 s window (256 frames) with small widths
CONFIG = ModelConfig(num_frames=256, embed_dim=24, depth=2, num_heads=2,
                     decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
# (n_sounds, seconds): ours, then the validator's batches (2021.0.6: 2 x 1.07/1.98/4.0 s; 2021.0.2: 16 x 2.0 s)
TIMESTAMP_BATCHES = ((2, 0.5), (2, 1.07), (2, 1.98), (2, 2.56), (2, 4.0), (2, 10.0), (16, 2.0))


def save_tiny_model(folder):
    """A model folder holding a tiny random encoder (seed 0) with the paper world's preprocessing."""
    torch.manual_seed(0)
    meta = {
        "model": to_dict(CONFIG),
        "fbank": to_dict(FbankConfig(num_mel_bins=128, target_frames=256)),
        "fbank_stats": {"mean": -6.0, "std": 4.0},
        "world": load_world_config("paper").to_dict(),
        "step": 1,
    }
    save_encoder(folder / "encoder.safetensors", ViTEncoder(CONFIG).state_dict(), meta)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("hear_run"))


@pytest.fixture(scope="module")
def model(model_dir):
    return hear.load_model(str(model_dir))


def white_noise(n_sounds: int, seconds: float, sr: int = 16000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_sounds, int(seconds * sr), generator=g) * 2 - 1


def test_model_attributes(model, model_dir):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000 and model.sample_rate in (16000, 22050, 32000, 44100, 48000)
    assert isinstance(model.scene_embedding_size, int) and model.scene_embedding_size == 24
    assert isinstance(model.timestamp_embedding_size, int) and model.timestamp_embedding_size == 24
    assert model.to("cpu") is model
    assert hear.load_model(model_dir / "encoder.safetensors").sample_rate == 16000
    with pytest.raises(CheckpointError, match="model_file_path"):
        hear.load_model()


def test_load_model_passes_settings(model_dir):
    m = hear.load_model(str(model_dir), layer=0, pool="cls", batch_size=4, reinit=True, seed=3)
    assert m.layer == 0 and m.pool == "cls" and m.batch_size == 4 and m.encoder.reinit
    with pytest.raises(ValueError, match="layer"):
        hear.load_model(str(model_dir), layer=7)
    with pytest.raises(ValueError, match="'concat', not 'all'"):
        hear.load_model(str(model_dir), layer="all")
    with pytest.raises(ValueError, match="pool must be one of"):
        hear.load_model(str(model_dir), pool="max")


@pytest.mark.parametrize("layer, pool, scene, timestamp", [
    (-1, "mean", 24, 24), (0, "cls", 24, 24), (-1, "meanstd", 48, 24),
    ("concat", "mean", 48, 48), ("concat", "meanstd", 96, 48),
])
def test_embedding_sizes_follow_the_pooling(model_dir, layer, pool, scene, timestamp):
    m = hear.load_model(str(model_dir), layer=layer, pool=pool)
    assert (m.layer, m.pool) == (layer, pool)
    assert (m.scene_embedding_size, m.timestamp_embedding_size) == (scene, timestamp)
    assert isinstance(m.scene_embedding_size, int) and isinstance(m.timestamp_embedding_size, int)
    audio = white_noise(2, 3.0, seed=5)
    assert hear.get_scene_embeddings(audio, m).shape == (2, scene)
    emb, ts = hear.get_timestamp_embeddings(audio, m)
    assert emb.shape == (2, ts.shape[1], timestamp)


def test_the_models_default_pooling_is_used(tmp_path, model_dir):
    from audiopg.model.checkpoint import load_encoder_file

    state, meta = load_encoder_file(model_dir / "encoder.safetensors")
    save_encoder(tmp_path / "encoder.safetensors", state, {**meta, "embedding": {"layer": "concat", "pool": "meanstd"}})
    m = hear.load_model(str(tmp_path))
    assert (m.layer, m.pool, m.scene_embedding_size) == ("concat", "meanstd", 96)
    audio = white_noise(1, 1.0, seed=6)
    ref = hear.get_scene_embeddings(audio, hear.load_model(str(model_dir), layer="concat", pool="meanstd"))
    torch.testing.assert_close(hear.get_scene_embeddings(audio, m), ref)
    m = hear.load_model(str(tmp_path), layer=-1, pool="mean")  # explicit settings win
    assert (m.layer, m.pool, m.scene_embedding_size) == (-1, "mean", 24)


@pytest.mark.parametrize("n_sounds, seconds", [(2, 0.5), (2, 2.56), (2, 10.0), (4, 2.74), (8, 3.74)])
def test_scene_embeddings_shape_dtype_device(model, n_sounds, seconds):
    audio = white_noise(n_sounds, seconds)
    emb = hear.get_scene_embeddings(audio, model)
    assert emb.ndim == 2 and emb.shape == (n_sounds, model.scene_embedding_size)
    assert emb.dtype == torch.float32 and emb.device == audio.device
    assert emb.detach().cpu().numpy().dtype == np.float32  # what the 2021.0.6 validator compares
    assert torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1])


def test_scene_embeddings_are_deterministic_and_batch_equals_items(model):
    audio = white_noise(3, 2.74, seed=1)
    a = hear.get_scene_embeddings(audio, model)
    b = hear.get_scene_embeddings(audio, model)
    assert torch.equal(a, b)
    for i in range(3):
        single = hear.get_scene_embeddings(audio[i:i + 1], model)
        torch.testing.assert_close(single[0], a[i], atol=1e-4, rtol=0)


@pytest.mark.parametrize("n_sounds, seconds", TIMESTAMP_BATCHES)
def test_timestamp_embeddings_follow_the_validator_rules(model, n_sounds, seconds):
    audio = white_noise(n_sounds, seconds, seed=2)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.ndim == 3 and ts.ndim == 2
    assert emb.shape[0] == n_sounds and emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.device == audio.device and ts.device == audio.device
    assert torch.isfinite(emb).all()
    t = ts.numpy().astype(np.float64)
    assert all(np.array_equal(t[0], row) for row in t)
    diff = np.diff(t, axis=1)
    assert (diff > 0).all(), "timestamps must increase"
    assert diff.max() <= 50.0, "hop must be at most 50 ms"  # 2021.0.6 warns on the max, 2021.0.2 on the mean
    assert np.abs(diff - diff.mean()).max() < 1e-3, "timestamps must be regular"  # 2021.0.2: 1e-3; 2021.0.6: 1 ms
    length_ms = 1000 * seconds
    assert t.max() <= length_ms  # an error in the validator
    assert t.max() >= length_ms - min(diff.mean(), 50.0)  # it warns when the embeddings stop short of the end
    assert t.min() <= diff.mean()  # it warns when the first timestamp comes later


def test_timestamps_do_not_drift_over_long_audio(model):
    """The validator's warning it cannot test itself: rounding must not accumulate over long audio."""
    emb, ts = hear.get_timestamp_embeddings(white_noise(1, 60.0, seed=7), model)
    assert ts.shape == (1, 1500) and emb.shape == (1, 1500, model.timestamp_embedding_size)
    assert torch.equal(ts[0], 7.5 + 40.0 * torch.arange(1500, dtype=torch.float32))


def test_the_official_validator_passes(model_dir, recwarn):
    validate = pytest.importorskip("hearvalidator.validate",
                                   reason="hearvalidator and tensorflow not installed (docs/suites.md)")
    try:
        validate.ValidateModel("audiopg.api.hear", str(model_dir), device="cpu")()
    except validate.ModelError as err:  # a BaseException, not an Exception
        pytest.fail(f"hear-validator: {err}")
    ours = [str(w.message) for w in recwarn
            if w.filename.endswith("validate.py") and "common bug" not in str(w.message)]
    assert not ours, ours


def test_timestamp_embeddings_are_deterministic_and_batch_equals_items(model):
    audio = white_noise(3, 4.0, seed=3)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    emb2, _ = hear.get_timestamp_embeddings(audio, model)
    assert torch.equal(emb, emb2)
    for i in range(3):
        e1, t1 = hear.get_timestamp_embeddings(audio[i:i + 1], model)
        torch.testing.assert_close(e1[0], emb[i], atol=1e-4, rtol=0)
        assert torch.equal(t1[0], ts[i])


def test_timestamp_embeddings_vary_over_time(model):
    audio = torch.zeros(1, 32000)
    audio[0, 16000:20000] = white_noise(1, 0.25, seed=4)[0]  # a burst at 1.0-1.25 s
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    before = emb[0, ts[0] < 700]
    during = emb[0, (ts[0] > 1050) & (ts[0] < 1200)]
    assert len(before) and len(during)
    assert (during.mean(0) - before.mean(0)).norm() > 0.1 * before.norm(dim=1).mean()


def test_silence_gives_finite_embeddings(model):
    silence = torch.zeros(2, 16000)
    assert torch.isfinite(hear.get_scene_embeddings(silence, model)).all()
    emb, ts = hear.get_timestamp_embeddings(silence, model)
    assert torch.isfinite(emb).all() and torch.isfinite(ts).all()


def test_bad_audio_is_rejected(model):
    with pytest.raises(ValueError, match="n_sounds"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(TypeError):
        hear.get_scene_embeddings(np.zeros((1, 16000), np.float32), model)
