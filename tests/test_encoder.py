"""Tests for audiopg.Encoder: strict loading, preprocessing, windowing, pooling, time stamps."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import audiopg
from audiopg.audio.fbank import LOG_FLOOR, Fbank, FbankConfig, FbankStats
from audiopg.audio.io import noise_floor, resample
from audiopg.core.config import to_dict
from audiopg.core.errors import CheckpointError
from audiopg.model import ModelConfig, ViTEncoder
from audiopg.model import encoder as encoder_module
from audiopg.model.checkpoint import save_encoder
from audiopg.model.encoder import (
    DEFAULT_LAYER,
    DEFAULT_POOL,
    POOLS,
    Encoder,
    parse_layer,
)
from audiopg.synth import load_world_config

torch.set_num_threads(1)

SR = 16000
# 64 frames = 0.64 s windows, 4 x 8 patches, tiny widths: fast on a CPU
TINY = dict(num_frames=64, embed_dim=32, depth=3, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
MEAN, STD = -6.0, 4.0


def metadata(cfg: ModelConfig, **world_changes) -> dict:
    world = load_world_config("paper").replace(**world_changes).to_dict()
    return {
        "model": to_dict(cfg),
        "fbank": to_dict(FbankConfig(num_mel_bins=128, target_frames=cfg.num_frames)),
        "fbank_stats": {"mean": MEAN, "std": STD},
        "world": world,
        "step": 123,
    }


def make_checkpoint(folder, seed: int = 0, state_edit=None, embedding=None, model=None, **world_changes):
    cfg = ModelConfig(**{**TINY, **(model or {})})
    torch.manual_seed(seed)
    vit = ViTEncoder(cfg)
    state = vit.state_dict()
    if state_edit is not None:
        state = state_edit(dict(state))
    meta = metadata(cfg, **world_changes)
    if embedding is not None:
        meta["embedding"] = embedding
    save_encoder(folder / "encoder.safetensors", state, meta)
    return vit


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    vit = make_checkpoint(folder)
    return folder, vit.eval()


@pytest.fixture(scope="module")
def enc(run):
    return Encoder.from_pretrained(run[0])


def noise(n: int, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * amp).astype(np.float32)


def manual_spec(wave: np.ndarray, frames: int) -> torch.Tensor:
    """Reference preprocessing: peak-normalize, pad with the noise floor to ``frames`` frames, fbank, normalize."""
    x = wave / np.abs(wave).max()
    need = (frames - 1) * 160 + 400
    x = np.concatenate([x, noise_floor(need - len(x), 1e-3)]) if len(x) < need else x[:need]
    spec = Fbank(FbankConfig(num_mel_bins=128))(torch.from_numpy(x.astype(np.float32)))
    assert spec.shape == (frames, 128)
    return FbankStats(MEAN, STD).normalize(spec)


# ----------------------------------------------------------------------------- loading
def test_from_pretrained_accepts_folder_or_file_and_exposes_properties(run, enc):
    folder, vit = run
    by_file = Encoder.from_pretrained(folder / "encoder.safetensors")
    assert enc.sample_rate == 16000 and enc.embedding_size == 32 and enc.depth == 3
    assert enc.window_seconds == pytest.approx(0.64) and enc.hop_seconds == pytest.approx(0.32)
    assert enc.config == ModelConfig(**TINY)
    assert enc.metadata["step"] == 123 and enc.metadata["fbank_stats"] == {"mean": MEAN, "std": STD}
    assert enc.peak_normalize is True
    for name, p in vit.state_dict().items():
        assert torch.equal(enc.model.state_dict()[name], p)
        assert torch.equal(by_file.model.state_dict()[name], p)
    assert audiopg.Encoder is Encoder


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    def edit(state):
        del state["blocks.1.mlp.fc1.weight"]
        state["extra.weight"] = torch.zeros(3)
        return state

    make_checkpoint(tmp_path, state_edit=edit)
    with pytest.raises(CheckpointError) as err:
        Encoder.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "missing keys: blocks.1.mlp.fc1.weight" in msg and "unexpected keys: extra.weight" in msg
    assert str(tmp_path / "encoder.safetensors") in msg


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    def edit(state):
        state["norm.weight"] = torch.ones(16)
        return state

    make_checkpoint(tmp_path, state_edit=edit)
    with pytest.raises(CheckpointError) as err:
        Encoder.from_pretrained(tmp_path)
    assert "norm.weight (checkpoint (16,) vs model (32,))" in str(err.value)


def test_prefixed_full_model_state_gets_a_hint(tmp_path):
    make_checkpoint(tmp_path, state_edit=lambda s: {f"encoder.{k}": v for k, v in s.items()})
    with pytest.raises(CheckpointError, match="'encoder.' prefix"):
        Encoder.from_pretrained(tmp_path)


def test_missing_checkpoint_and_bad_metadata(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Encoder.from_pretrained(tmp_path / "nope")
    cfg = ModelConfig(**TINY)
    meta = metadata(cfg)
    meta["fbank"] = to_dict(FbankConfig(num_mel_bins=64))
    save_encoder(tmp_path / "encoder.safetensors", ViTEncoder(cfg).state_dict(), meta)
    with pytest.raises(CheckpointError, match="num_mel_bins"):
        Encoder.from_pretrained(tmp_path)


def test_reinit_keeps_architecture_and_preprocessing_with_fresh_seeded_weights(run, enc):
    a = Encoder.from_pretrained(run[0], reinit=True, seed=1)
    b = Encoder.from_pretrained(run[0], reinit=True, seed=1)
    c = Encoder.from_pretrained(run[0], reinit=True, seed=2)
    assert a.reinit and not enc.reinit
    assert a.config == enc.config and a.fbank_config == enc.fbank_config and a.fbank_stats == enc.fbank_stats
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(a.model.state_dict()[key], b.model.state_dict()[key])
    assert not torch.equal(a.model.state_dict()[key], c.model.state_dict()[key])
    assert not torch.equal(a.model.state_dict()[key], enc.model.state_dict()[key])
    x = noise(8000)
    assert not torch.allclose(a.embed(x, SR).scene, enc.embed(x, SR).scene)


# ----------------------------------------------------------------------------- preprocessing and pooling
def test_one_window_clip_matches_the_reference_pipeline(run, enc):
    vit = run[1]
    x = noise(10240)  # exactly window_seconds
    spec = manual_spec(x, 64)
    with torch.no_grad():
        ref_mean = vit.embed(spec[None], pool="mean")
        ref_cls = vit.embed(spec[None], pool="cls")
        ref_l1 = vit.embed(spec[None], layer=1)
    torch.testing.assert_close(enc.embed(x, SR).scene, ref_mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.embed(x, SR, pool="cls").scene, ref_cls, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.embed(x, SR, layer=1).scene, ref_l1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.features(x, SR)[0], spec, atol=1e-5, rtol=1e-5)


def test_short_clip_is_noise_padded_and_pooled_over_signal_columns_only(run, enc):
    vit = run[1]
    x = noise(5000)  # 30 full frames -> 2 of the 4 patch columns hold signal
    spec = manual_spec(x, 64)
    with torch.no_grad():
        tokens = vit.forward_features(spec[None])[:, 1:]  # (1, 4 * 8, D), time-major
    ref = tokens[:, : 2 * 8].mean(dim=1)
    torch.testing.assert_close(enc.embed(x, SR).scene, ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(enc.embed(x, SR).scene, tokens.mean(dim=1), atol=1e-4)
    feats = enc.features(x, SR)[0]
    floor = (LOG_FLOOR - MEAN) / (2 * STD)
    # the padding frames are a noise floor, not the log floor (a 1e-4 floor leaves ~27 % of the values there)
    assert feats.shape == (64, 128)
    at_floor = (feats[40:, 10:] <= floor + 1e-4).float().mean().item()
    assert at_floor < 0.05
    assert enc.pad_noise_level == pytest.approx(1e-3)  # the paper world's quietest background


def test_pad_level_comes_from_the_training_world(tmp_path):
    from audiopg.audio.io import PAD_NOISE_LEVEL
    from audiopg.synth import BackgroundConfig

    make_checkpoint(tmp_path / "a", background=BackgroundConfig(level=(0.004, 0.02)))
    assert Encoder.from_pretrained(tmp_path / "a").pad_noise_level == pytest.approx(0.004)
    make_checkpoint(tmp_path / "b", background=BackgroundConfig(enabled=False))
    assert Encoder.from_pretrained(tmp_path / "b").pad_noise_level == PAD_NOISE_LEVEL
    enc0 = Encoder.from_pretrained(tmp_path / "a", pad_noise_level=0.0)
    feats = enc0.features(noise(3000), SR)[0]
    assert bool((feats[30:] == (LOG_FLOOR - MEAN) / (2 * STD)).all())  # explicit digital zeros


def test_long_clip_is_the_mean_of_half_overlapping_windows_with_the_last_aligned_to_the_end(run, enc):
    vit = run[1]
    # 136 full frames -> 9 columns (the 9th partly padding): windows start at columns 0, 2, 4 and 5
    x = noise(135 * 160 + 400)
    spec = manual_spec(x, 144)
    with torch.no_grad():
        windows = torch.stack([spec[s * 16:(s + 4) * 16] for s in (0, 2, 4, 5)])
        ref = vit.embed(windows).mean(dim=0, keepdim=True)
    torch.testing.assert_close(enc.embed(x, SR).scene, ref, atol=1e-5, rtol=1e-4)
    # a custom hop of one column: every start from 0 to 5
    with torch.no_grad():
        ref1 = vit.embed(torch.stack([spec[s * 16:(s + 4) * 16] for s in range(6)])).mean(dim=0, keepdim=True)
    torch.testing.assert_close(enc.embed(x, SR, hop_seconds=0.16).scene, ref1, atol=1e-5, rtol=1e-4)


def test_layer_all_stacks_every_block_with_the_normed_output_last(enc):
    x = [noise(3000, 1), noise(20000, 2)]
    allx = enc.embed(x, SR, layer="all").scene
    assert allx.shape == (2, 3, 32)
    torch.testing.assert_close(allx[:, 2], enc.embed(x, SR).scene, atol=1e-5, rtol=1e-4)
    for i in range(2):
        torch.testing.assert_close(allx[:, i], enc.embed(x, SR, layer=i).scene, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(allx[:, 2], enc.embed(x, SR, layer=2).scene)  # last block before the norm


def test_peak_normalization_follows_the_world(tmp_path, enc):
    x = noise(6000)
    loud, quiet = enc.embed(x, SR).scene, enc.embed(x * 0.05, SR).scene
    torch.testing.assert_close(loud, quiet, atol=1e-5, rtol=1e-4)
    off = enc.embed(x * 0.05, SR, normalize=False).scene
    assert not torch.allclose(off, quiet, atol=1e-3)
    make_checkpoint(tmp_path, peak_normalize=False)
    raw = Encoder.from_pretrained(tmp_path)
    assert raw.peak_normalize is False
    assert not torch.allclose(raw.embed(x, SR).scene, raw.embed(x * 0.05, SR).scene, atol=1e-3)
    torch.testing.assert_close(raw.embed(x, SR, normalize=True).scene, raw.embed(x * 0.05, SR, normalize=True).scene,
                               atol=1e-5, rtol=1e-4)


def test_other_sample_rates_are_resampled(enc):
    x44 = noise(44100)
    got = enc.embed(x44, 44100).scene
    torch.testing.assert_close(got, enc.embed(resample(x44, 44100, SR), SR).scene, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, enc.embed(x44, SR).scene, atol=1e-3)


def test_batch_equals_items_one_by_one(enc):
    clips = [noise(n, seed) for seed, n in enumerate((300, 5000, 10240, 33333))]
    together = enc.embed(clips, SR, batch_size=3).scene
    for i, clip in enumerate(clips):
        torch.testing.assert_close(together[i], enc.embed(clip, SR, batch_size=1).scene[0], atol=1e-5, rtol=1e-4)
    same = np.stack([noise(7000, s) for s in range(3)])
    torch.testing.assert_close(enc.embed(same, SR).scene, enc.embed(list(same), SR).scene, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.embed(torch.from_numpy(same), SR).scene, enc.embed(same, SR).scene)


def test_outputs_are_ordinary_float32_tensors_and_silence_is_finite(enc):
    out = enc.embed(np.zeros((2, 4000), np.float32), SR, timestamps=True)
    assert out.scene.dtype == torch.float32 and not out.scene.is_inference()
    assert torch.isfinite(out.scene).all() and torch.isfinite(out.frames).all()
    out.scene.add_(1.0)  # usable outside inference mode


def test_bad_inputs_raise_clear_errors(enc):
    with pytest.raises(ValueError, match="full scale"):
        enc.embed(np.zeros(1000, np.int16), SR)
    with pytest.raises(ValueError, match="NaN"):
        enc.embed(np.full(1000, np.nan, np.float32), SR)
    with pytest.raises(ValueError, match="empty"):
        enc.embed([noise(100), np.zeros(0, np.float32)], SR)
    with pytest.raises(ValueError, match="shape"):
        enc.embed(np.zeros((2, 2, 100), np.float32), SR)
    with pytest.raises(ValueError, match="layer"):
        enc.embed(noise(100), SR, layer=3)
    with pytest.raises(ValueError, match="pool"):
        enc.embed(noise(100), SR, pool="max")
    with pytest.raises(ValueError, match="sample_rate"):
        enc.embed(noise(100), 0)


# ----------------------------------------------------------------------------- pooling choices
@pytest.mark.parametrize("pool", POOLS)
def test_every_pooling_has_the_documented_shape_and_batches_equal_items(enc, pool):
    clips = [noise(n, i) for i, n in enumerate((3000, 10240, 33333))]  # short, one window, long
    width = {"mean": 32, "cls": 32, "meanstd": 64}[pool]
    for layer, shape in ((-1, (width,)), (1, (width,)), ("all", (3, width)), ("concat", (3 * width,))):
        assert enc.embedding_size_for(layer, pool) == shape[-1]
        together = enc.embed(clips, SR, layer=layer, pool=pool, batch_size=4).scene
        assert together.shape == (3, *shape)
        for i, clip in enumerate(clips):
            one = enc.embed(clip, SR, layer=layer, pool=pool, batch_size=1).scene
            assert one.shape == (1, *shape)
            torch.testing.assert_close(one[0], together[i], atol=1e-5, rtol=1e-4)


def test_meanstd_starts_with_the_mean_and_its_std_is_non_negative(enc):
    clips = [noise(n, i) for i, n in enumerate((300, 5000, 10240, 33333))]
    for layer in (-1, 0, "all"):
        ms = enc.embed(clips, SR, layer=layer, pool="meanstd").scene
        torch.testing.assert_close(ms[..., :32], enc.embed(clips, SR, layer=layer, pool="mean").scene,
                                   atol=1e-6, rtol=1e-6)
        std = ms[..., 32:]
        assert bool((std[0] == 0).all())  # 300 samples: one signal column, nothing varies over time
        assert bool((std[1:] > 0).all())


def test_meanstd_is_the_std_over_time_of_the_signal_columns(run, enc):
    vit = run[1]
    x = noise(5000)  # 2 of the 4 patch columns hold signal
    with torch.no_grad():
        tokens = vit.forward_features(manual_spec(x, 64)[None])[0, 1:].reshape(4, 8, 32)  # (time, frequency, D)
    columns = tokens[:2].mean(dim=1)
    ref = torch.cat([columns.mean(dim=0), columns.std(dim=0, correction=0)])
    got = enc.embed(x, SR, pool="meanstd").scene[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[32:], tokens[:2].reshape(16, 32).std(dim=0, correction=0), atol=1e-3)
    # a long clip: each window's std (windows start at columns 0, 2, 4, 5), averaged over the windows
    x = noise(135 * 160 + 400)
    spec = manual_spec(x, 144)
    with torch.no_grad():
        windows = torch.stack([spec[s * 16:(s + 4) * 16] for s in (0, 2, 4, 5)])
        columns = vit.forward_features(windows)[:, 1:].reshape(4, 4, 8, 32).mean(dim=2)  # (window, time, D)
    ref = torch.cat([columns.mean(dim=1), columns.std(dim=1, correction=0)], dim=1).mean(dim=0)
    torch.testing.assert_close(enc.embed(x, SR, pool="meanstd").scene[0], ref, atol=1e-5, rtol=1e-4)


def test_meanstd_of_constant_tokens_has_zero_std(run):
    vit = copy.deepcopy(run[1])
    bias = torch.linspace(-1.0, 1.0, 32)
    with torch.no_grad():  # the final norm then outputs `bias` for every token
        vit.norm.weight.zero_()
        vit.norm.bias.copy_(bias)
    enc = Encoder(vit, metadata(vit.config))
    out = enc.embed([noise(5000), noise(33333, 1)], SR, pool="meanstd").scene
    torch.testing.assert_close(out[:, :32], bias.expand(2, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 32:], torch.zeros(2, 32), atol=1e-6, rtol=0)
    assert bool((enc.embed(noise(5000), SR, layer=0, pool="meanstd").scene[:, 32:] > 1e-3).all())


def test_concat_is_the_per_layer_embeddings_side_by_side(enc):
    clips = [noise(3000, 1), noise(20000, 2)]
    for pool in POOLS:
        per_layer = [enc.embed(clips, SR, layer=layer, pool=pool).scene for layer in (0, 1, -1)]
        concat = enc.embed(clips, SR, layer="concat", pool=pool).scene
        torch.testing.assert_close(concat, torch.cat(per_layer, dim=1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(concat, enc.embed(clips, SR, layer="all", pool=pool).scene.reshape(2, -1))


def test_concat_timestamps_are_every_layers_column_means_side_by_side(enc):
    x = noise(20000)
    frames, stamps = enc.embed_timestamps(x, SR, layer="concat")
    assert frames.shape == (1, stamps.shape[1], 3 * 32)
    for i, layer in enumerate((0, 1, -1)):
        f, t = enc.embed_timestamps(x, SR, layer=layer)
        torch.testing.assert_close(frames[..., i * 32:(i + 1) * 32], f, atol=1e-5, rtol=1e-4)
        assert torch.equal(t, stamps)
    out = enc.embed(x, SR, layer="concat", pool="meanstd", timestamps=True)
    assert out.scene.shape == (1, 3 * 64)
    torch.testing.assert_close(out.frames, frames)


def test_the_checkpoint_default_pooling_is_honoured(tmp_path, enc, monkeypatch):
    clips = [noise(3000), noise(20000, 1)]
    assert (enc.default_layer, enc.default_pool) == (DEFAULT_LAYER, DEFAULT_POOL)  # no 'embedding' metadata
    make_checkpoint(tmp_path / "a", embedding={"layer": "concat", "pool": "meanstd"})  # same weights as `enc`
    a = Encoder.from_pretrained(tmp_path / "a")
    assert (a.default_layer, a.default_pool) == ("concat", "meanstd") and a.embedding_size_for() == 3 * 64
    torch.testing.assert_close(a.embed(clips, SR).scene, enc.embed(clips, SR, layer="concat", pool="meanstd").scene)
    torch.testing.assert_close(a.embed(clips, SR, layer=-1, pool="mean").scene, enc.embed(clips, SR).scene)
    assert a.embed_timestamps(clips, SR)[0][0].shape[1] == 3 * 32  # time stamps follow the default layer
    make_checkpoint(tmp_path / "b", embedding={"pool": "cls"})
    b = Encoder.from_pretrained(tmp_path / "b")
    assert (b.default_layer, b.default_pool) == (DEFAULT_LAYER, "cls")
    torch.testing.assert_close(b.embed(clips, SR).scene, enc.embed(clips, SR, pool="cls").scene)
    # without the entry, the library constants decide
    monkeypatch.setattr(encoder_module, "DEFAULT_POOL", "meanstd")
    c = Encoder.from_pretrained(tmp_path / "b", reinit=True)
    assert c.default_pool == "cls" and Encoder.from_pretrained(tmp_path / "a").default_pool == "meanstd"
    assert Encoder(enc.model, enc.metadata).default_pool == "meanstd"


@pytest.mark.parametrize("stored, message", [
    ({"pool": "max"}, "pool must be one of"),
    ({"layer": 3}, "layer must be"),
    ({"layer": "all"}, "one vector|several vectors"),
    ({"pooling": "mean"}, "'embedding' must be a mapping with 'layer' and/or 'pool'"),
    ("meanstd", "'embedding' must be a mapping"),
])
def test_invalid_stored_pooling_is_a_checkpoint_error(tmp_path, stored, message):
    make_checkpoint(tmp_path, embedding=stored)
    with pytest.raises(CheckpointError, match=message) as err:
        Encoder.from_pretrained(tmp_path)
    assert str(tmp_path / "encoder.safetensors") in str(err.value)


def test_invalid_layer_or_pool_names_the_option(enc):
    with pytest.raises(ValueError, match="pool must be one of 'mean', 'cls', 'meanstd', got 'max'"):
        enc.check_layer_pool(-1, "max")
    for layer in ("concatenated", 3, True, -2, None):
        with pytest.raises(ValueError, match="layer must be"):
            enc.check_layer_pool(layer, "mean")
    with pytest.raises(ValueError, match="layer must be"):
        enc.embedding_size_for(5, "mean")
    with pytest.raises(ValueError, match="pool must be"):
        enc.embed(noise(100), SR, pool="std")
    with pytest.raises(ValueError, match="'concat', not layer='all'"):
        enc.embed_timestamps(noise(1000), SR, layer="all")
    assert parse_layer("concat") == "concat" and parse_layer("-1") == -1 and parse_layer("2") == 2
    with pytest.raises(ValueError, match="layer must be an integer .* or 'concat', got 'all'"):
        parse_layer("all")


# ----------------------------------------------------------------------------- time stamps
def test_timestamps_every_40_ms_at_column_centres(enc):
    x = noise(int(1.5 * SR))
    out = enc.embed(x, SR, timestamps=True)
    ts = out.timestamps[0].numpy()
    assert out.frames.shape == (1, len(ts), 32) and out.timestamps.dtype == torch.float32
    assert ts[0] == pytest.approx(7.5)  # 80 ms of noise floor in front: column centre 87.5 - 80
    np.testing.assert_allclose(np.diff(ts), 40.0, atol=1e-3)
    assert 1500 - 40 < ts[-1] <= 1500
    frames2, ts2 = enc.embed_timestamps(x, SR)
    torch.testing.assert_close(frames2, out.frames)
    torch.testing.assert_close(ts2, out.timestamps)


def test_timestamps_shift_with_the_audio(run):
    """Delaying the audio by exactly 40 ms moves every embedding one step later (checks copy interleaving)."""
    enc = Encoder.from_pretrained(run[0], pad_noise_level=0.0)  # zero padding == the zeros that delay the clip
    x = noise(8000)
    x[1000:1400] *= 3.0  # something to see
    delayed = np.concatenate([np.zeros(640, np.float32), x])
    f0, t0 = enc.embed_timestamps(x, SR)
    f1, t1 = enc.embed_timestamps(delayed, SR)
    n = f0.shape[1]
    checked = 0
    for m in range(n):
        if m % 4 == 3 or m + 1 >= f1.shape[1]:
            continue  # copy 0 of the delayed clip has no counterpart in the original
        torch.testing.assert_close(f1[0, m + 1], f0[0, m], atol=1e-5, rtol=1e-4)
        assert float(t1[0, m + 1] - t0[0, m]) == pytest.approx(40.0)
        checked += 1
    assert checked >= 8
    assert not torch.allclose(f0[0, 0], f0[0, 1], atol=1e-4)


def test_timestamps_of_list_input_are_per_clip_lists(enc):
    frames, ts = enc.embed_timestamps([noise(1000), noise(20000)], SR)
    assert isinstance(frames, list) and len(frames) == 2
    assert frames[0].shape == (len(ts[0]), 32) and frames[1].shape == (len(ts[1]), 32)
    assert len(ts[0]) == int((62.5 - 7.5) // 40) + 1 and len(ts[1]) == int((1250 - 7.5) // 40) + 1
    _, tiny = enc.embed_timestamps([noise(64)], SR)
    assert len(tiny[0]) == 1 and float(tiny[0][0]) == pytest.approx(2.0)  # 4 ms: shorter than the first centre
    with pytest.raises(ValueError, match="single layer"):
        enc.embed(noise(1000), SR, layer="all", timestamps=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(run):
    cpu = Encoder.from_pretrained(run[0])
    gpu = Encoder.from_pretrained(run[0], device="cuda")
    clips = [noise(3000, 1), noise(30000, 2)]
    out = gpu.embed(clips, SR, timestamps=True)
    assert out.scene.device.type == "cuda"
    ref = cpu.embed(clips, SR, timestamps=True)
    torch.testing.assert_close(out.scene.cpu(), ref.scene, atol=1e-4, rtol=1e-3)
    for a, b in zip(out.frames, ref.frames):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-3)


def test_encoder_from_a_model_in_memory(run, enc):
    vit = run[1]
    meta = {k: v for k, v in enc.metadata.items() if k != "model"}
    direct = Encoder(vit, meta)
    assert direct.metadata["model"] == enc.metadata["model"]
    x = noise(9000)
    torch.testing.assert_close(direct.embed(x, SR).scene, enc.embed(x, SR).scene)
    other = ModelConfig(**{**TINY, "depth": 2})
    with pytest.raises(CheckpointError, match="differ"):
        Encoder(ViTEncoder(other), enc.metadata)


def test_oblong_patches_pool_columns_of_their_own_length(tmp_path):
    """8-frame x 32-bin patches: 80 ms columns, so a short clip keeps more signal columns and time stamps come
    from 2 shifted copies instead of 4 (still every 40 ms)."""
    vit = make_checkpoint(tmp_path, model={"patch_size": 32, "patch_frames": 8}).eval()
    enc = Encoder.from_pretrained(tmp_path)
    assert (enc.config.patch_t, enc.config.grid_t, enc.config.grid_f) == (8, 8, 4)
    x = noise(5000)  # 30 full frames -> 4 of the 8 columns of 8 frames hold signal
    spec = manual_spec(x, 64)
    with torch.no_grad():
        tokens = vit.forward_features(spec[None])[:, 1:]  # (1, 8 * 4, D), time-major
    torch.testing.assert_close(enc.embed(x, SR, pool="mean").scene, tokens[:, : 4 * 4].mean(dim=1),
                               atol=1e-5, rtol=1e-4)
    long = noise(int(1.5 * SR))
    both = enc.embed([x, long], SR).scene
    torch.testing.assert_close(both[1:], enc.embed(long, SR).scene, atol=1e-5, rtol=1e-4)
    ts = enc.embed(long, SR, timestamps=True).timestamps[0].numpy()
    assert enc.timestamp_step_ms() == pytest.approx(40.0)
    np.testing.assert_allclose(np.diff(ts), 40.0, atol=1e-3)
    assert 1500 - 40 < ts[-1] <= 1500
