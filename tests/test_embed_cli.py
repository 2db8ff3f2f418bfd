"""Tests for ``audiopg embed``, ``audiopg export`` and the model card."""
from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audiopg.api.model_card import model_card_text, write_model_card
from audiopg.audio.fbank import FbankConfig
from audiopg.audio.io import load_audio
from audiopg.cli.main import main
from audiopg.core.config import to_dict
from audiopg.model import MODEL_PRESETS, ModelConfig, ViTEncoder
from audiopg.model.checkpoint import save_encoder
from audiopg.model.encoder import Encoder
from audiopg.synth import load_world_config

torch.set_num_threads(1)

CONFIG = ModelConfig(num_frames=64, embed_dim=16, depth=2, num_heads=2,
                     decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def metadata(cfg: ModelConfig = CONFIG, **extra) -> dict:
    return {
        "model": to_dict(cfg),
        "fbank": to_dict(FbankConfig(num_mel_bins=128, target_frames=cfg.num_frames)),
        "fbank_stats": {"mean": -6.25, "std": 4.5},
        "world": load_world_config("paper").to_dict(),
        **extra,
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    meta = metadata(step=5000, clips_seen=640000, wall_time_s=5400.0, device="NVIDIA H100 80GB HBM3",
                    git_commit="abc1234", train={"lr": 0.0005, "batch_size": 128})
    save_encoder(folder / "encoder.safetensors", ViTEncoder(CONFIG).state_dict(), meta)
    (folder / "config.json").write_text(json.dumps({"world": "paper", "model": {"preset": "custom"}}))
    return folder


def tone(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def audio_dir(tmp_path):
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "a.wav", tone(0.4, 16000), 16000)
    sf.write(root / "sub" / "b.flac", tone(1.5, 8000, 300), 8000)
    sf.write(root / "sub" / "c.wav", np.stack([tone(2.0, 44100), tone(2.0, 44100, 880)], 1), 44100)
    (root / "notes.txt").write_text("not audio")
    return root


def add_bad_files(root):
    (root / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(2048))
    sf.write(root / "empty.wav", np.zeros((0, 1), np.float32), 16000)


def read_index(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def no_temp_files(folder) -> bool:
    return not list(folder.glob(".*.tmp"))


# ----------------------------------------------------------------------------- audiopg embed
def test_embed_folder_writes_matrix_and_index(run_dir, audio_dir, tmp_path, capsys):
    out = tmp_path / "out" / "emb"
    assert main(["embed", str(audio_dir), "--checkpoint", str(run_dir), "--out", str(out), "--device", "cpu",
                 "--batch-size", "2"]) == 0
    matrix = np.load(tmp_path / "out" / "emb.npy")
    rows = read_index(tmp_path / "out" / "emb.csv")
    assert matrix.dtype == np.float32 and matrix.shape == (3, 16)
    assert [r["row"] for r in rows] == ["0", "1", "2"]
    assert [r["path"] for r in rows] == [str(audio_dir / "a.wav"), str(audio_dir / "sub" / "b.flac"),
                                         str(audio_dir / "sub" / "c.wav")]
    assert [float(r["duration_s"]) for r in rows] == pytest.approx([0.4, 1.5, 2.0], abs=1e-3)
    enc = Encoder.from_pretrained(run_dir)
    for i, r in enumerate(rows):
        ref = enc.embed(load_audio(r["path"], 16000), 16000).scene[0].numpy()
        np.testing.assert_allclose(matrix[i], ref, atol=1e-5)
    assert not (tmp_path / "out" / "emb.errors.csv").exists()
    assert no_temp_files(tmp_path / "out")
    assert "embedded 3 file(s)" in capsys.readouterr().out


def test_embed_list_file_layer_and_pool(run_dir, audio_dir, tmp_path):
    listing = audio_dir / "files.txt"
    listing.write_text("# two of them\nsub/c.wav\n\na.wav\n")
    out = tmp_path / "emb.csv"
    assert main(["embed", str(listing), "--checkpoint", str(run_dir / "encoder.safetensors"), "--out", str(out),
                 "--layer", "0", "--pool", "cls", "--no-progress"]) == 0
    rows = read_index(out)
    assert [r["path"] for r in rows] == [str(audio_dir / "sub" / "c.wav"), str(audio_dir / "a.wav")]
    matrix = np.load(tmp_path / "emb.npy")
    enc = Encoder.from_pretrained(run_dir)
    ref = enc.embed(load_audio(audio_dir / "a.wav"), 16000, layer=0, pool="cls").scene[0].numpy()
    np.testing.assert_allclose(matrix[1], ref, atol=1e-5)


def test_embed_meanstd_concat_and_layer_all_refused(run_dir, audio_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    assert main(["embed", str(audio_dir), "--checkpoint", str(run_dir), "--out", str(out), "--layer", "concat",
                 "--pool", "meanstd", "--no-progress"]) == 0
    assert "(layer concat, meanstd-pooled)" in capsys.readouterr().out
    matrix = np.load(tmp_path / "emb.npy")
    assert matrix.shape == (3, 2 * 2 * 16)
    enc = Encoder.from_pretrained(run_dir)
    ref = enc.embed(load_audio(audio_dir / "a.wav"), 16000, layer="concat", pool="meanstd").scene[0].numpy()
    np.testing.assert_allclose(matrix[0], ref, atol=1e-5)
    assert main(["embed", str(audio_dir), "--checkpoint", str(run_dir), "--out", str(tmp_path / "e"), "--layer",
                 "-1", "--pool", "meanstd", "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npy")[:, :16], np.load(tmp_path / "emb.npy")[:, 32:48], atol=1e-5)
    assert main(["embed", str(audio_dir), "--checkpoint", str(run_dir), "--out", str(out), "--layer", "all"]) == 2
    assert "--layer must be" in capsys.readouterr().err


def test_bad_file_fails_by_default_naming_it_and_writes_nothing(run_dir, audio_dir, tmp_path, capsys):
    add_bad_files(audio_dir)
    out = tmp_path / "emb"
    assert main(["embed", str(audio_dir), "--checkpoint", str(run_dir), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(audio_dir / "corrupt.wav") in err and "--skip-bad" in err
    assert not list(tmp_path.glob("emb*"))


def test_skip_bad_lists_the_skipped_files(run_dir, audio_dir, tmp_path, capsys):
    add_bad_files(audio_dir)
    out = tmp_path / "emb"
    (tmp_path / "emb.errors.csv").write_text("stale\n")
    assert main(["embed", str(audio_dir), "--checkpoint", str(run_dir), "--out", str(out), "--skip-bad",
                 "--no-progress"]) == 0
    assert np.load(tmp_path / "emb.npy").shape == (3, 16)
    assert len(read_index(tmp_path / "emb.csv")) == 3
    errors = read_index(tmp_path / "emb.errors.csv")
    assert sorted(e["path"] for e in errors) == [str(audio_dir / "corrupt.wav"), str(audio_dir / "empty.wav")]
    assert any("0 samples" in e["error"] for e in errors)
    err = capsys.readouterr().err
    assert "skipped 2 bad file(s)" in err and str(audio_dir / "empty.wav") in err
    # a clean re-run removes the stale error list
    (audio_dir / "corrupt.wav").unlink()
    (audio_dir / "empty.wav").unlink()
    assert main(["embed", str(audio_dir), "--checkpoint", str(run_dir), "--out", str(out), "--skip-bad",
                 "--no-progress", "--overwrite"]) == 0
    assert not (tmp_path / "emb.errors.csv").exists()
    assert no_temp_files(tmp_path)


def test_parquet_without_pyarrow_is_a_clear_error(run_dir, audio_dir, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    assert main(["embed", str(audio_dir), "--checkpoint", str(run_dir), "--out", str(tmp_path / "emb.parquet"),
                 "--no-progress"]) == 2
    assert "pyarrow" in capsys.readouterr().err
    assert not list(tmp_path.glob("emb*"))


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed")
def test_parquet_index(run_dir, audio_dir, tmp_path):  # pragma: no cover - pyarrow is optional
    import pyarrow.parquet as pq

    assert main(["embed", str(audio_dir), "--checkpoint", str(run_dir), "--out", str(tmp_path / "emb.parquet"),
                 "--no-progress"]) == 0
    table = pq.read_table(tmp_path / "emb.parquet").to_pydict()
    assert table["row"] == [0, 1, 2] and np.load(tmp_path / "emb.npy").shape == (3, 16)


def test_embed_input_errors(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert main(["embed", str(empty), "--checkpoint", str(run_dir), "--out", str(tmp_path / "e")]) == 2
    assert "no audio files" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "missing"), "--checkpoint", str(run_dir), "--out", str(tmp_path / "e")]) == 2
    assert "no such" in capsys.readouterr().err
    sf.write(tmp_path / "x.wav", tone(0.2, 16000), 16000)
    assert main(["embed", str(tmp_path / "x.wav"), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "x.wav"), "--checkpoint", str(run_dir), "--out", str(tmp_path / "e"),
                 "--layer", "9"]) == 2
    assert "layer must be" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["embed", str(tmp_path / "x.wav"), "--checkpoint", str(run_dir), "--out", str(tmp_path / "e"),
                     "--device", "cuda:0"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not list(tmp_path.glob("e.*"))


# ----------------------------------------------------------------------------- export and the model card
def test_export_copies_files_and_writes_the_card(run_dir, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"fsdd": {"accuracy": 0.8125}, "esc50": {"accuracy": 0.4321}}))
    model_dir = tmp_path / "model"
    assert main(["export", str(run_dir), "--out", str(model_dir), "--results", str(results)]) == 0
    assert (model_dir / "encoder.safetensors").read_bytes() == (run_dir / "encoder.safetensors").read_bytes()
    assert json.loads((model_dir / "config.json").read_text()) == json.loads((run_dir / "config.json").read_text())
    assert json.loads((model_dir / "results.json").read_text())["fsdd"]["accuracy"] == 0.8125
    card = (model_dir / "README.md").read_text()
    params = sum(p.numel() for p in ViTEncoder(CONFIG).parameters())
    for fact in (f"{params:,}", "custom", "| token width | 16 |", "| depth (blocks) | 2 |",
                 "paper", "harmonic", "| peak normalization | yes |",
                 "5,000", "640,000", "1 h 30 min", "NVIDIA H100 80GB HBM3", "abc1234", '"lr": 0.0005',
                 "-6.25", "4.5", "| mel bins | 128 |", "20 Hz to 8,000 Hz", "fsdd / accuracy | 0.8125", "esc50 / accuracy | 0.4321"):
        assert fact in card, fact
    assert "No results measured yet" not in card
    assert Encoder.from_pretrained(model_dir).embedding_size == 16
    # an existing model folder is not overwritten without --overwrite (or its alias --force)
    assert main(["export", str(run_dir), "--out", str(model_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(model_dir), "--force"]) == 0
    assert "No results measured yet" in (model_dir / "README.md").read_text()  # run folder has no results.json


def test_export_records_the_default_pooling_and_keeps_the_weights(run_dir, audio_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from audiopg.model.checkpoint import read_metadata

    before = (run_dir / "encoder.safetensors").read_bytes()
    model_dir = tmp_path / "model"
    assert main(["export", str(run_dir), "--out", str(model_dir), "--pool", "meanstd"]) == 0
    assert "default pooling recorded: layer -1, meanstd" in capsys.readouterr().out
    assert (run_dir / "encoder.safetensors").read_bytes() == before  # the run folder is never written
    assert not (run_dir / "README.md").exists()
    old, new = load_file(run_dir / "encoder.safetensors"), load_file(model_dir / "encoder.safetensors")
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    meta = read_metadata(model_dir / "encoder.safetensors")
    assert meta.pop("embedding") == {"layer": -1, "pool": "meanstd"}
    assert meta == read_metadata(run_dir / "encoder.safetensors")
    exported = Encoder.from_pretrained(model_dir)
    assert (exported.default_layer, exported.default_pool) == (-1, "meanstd")
    # the embed command follows it; the run folder (no entry) keeps the library default
    assert main(["embed", str(audio_dir), "--checkpoint", str(model_dir), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 0
    assert np.load(tmp_path / "e.npy").shape == (3, 32)
    assert Encoder.from_pretrained(run_dir).default_pool == "mean"
    # exporting the exported folder again keeps its choice; --layer alone keeps the pool it had
    assert main(["export", str(model_dir), "--out", str(tmp_path / "m2")]) == 0
    assert read_metadata(tmp_path / "m2" / "encoder.safetensors")["embedding"] == {"layer": -1, "pool": "meanstd"}
    assert main(["export", str(model_dir), "--out", str(tmp_path / "m3"), "--layer", "concat"]) == 0
    stored = read_metadata(tmp_path / "m3" / "encoder.safetensors")["embedding"]
    assert stored == {"layer": "concat", "pool": "meanstd"}
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "m4"), "--layer", "5"]) == 2
    assert "--layer/--pool: layer must be" in capsys.readouterr().err
    assert not (tmp_path / "m4" / "encoder.safetensors").exists()


def test_export_refuses_a_broken_checkpoint(tmp_path, capsys):
    bad = tmp_path / "run"
    state = ViTEncoder(CONFIG).state_dict()
    del state["norm.bias"]
    save_encoder(bad / "encoder.safetensors", state, metadata())
    assert main(["export", str(bad), "--out", str(tmp_path / "model")]) == 2
    assert "norm.bias" in capsys.readouterr().err
    assert not (tmp_path / "model" / "encoder.safetensors").exists()


def test_model_card_without_results_or_training_facts(tmp_path):
    meta = metadata(MODEL_PRESETS["tiny"])
    path = write_model_card(tmp_path, meta)
    card = path.read_text()
    assert path.name == "README.md"
    params = sum(p.numel() for p in ViTEncoder(MODEL_PRESETS["tiny"]).parameters())
    assert "| preset | tiny |" in card and f"{params:,}" in card and "2.56 s" in card
    assert "No results measured yet." in card
    assert "| optimizer steps | not recorded |" in card and "| wall time | not recorded |" in card
    world = load_world_config("paper").replace(peak_normalize=False).to_dict()
    custom = model_card_text({**meta, "world": world}, {"probe": 0.5})
    assert "custom (matches no built-in preset)" in custom and "| peak normalization | no |" in custom
    assert "| probe | 0.5 |" in custom
    assert "| patch | 16 x 16 (frames x mel bins) |" in card
    oblong = model_card_text({**meta, "model": {**meta["model"], "patch_size": 32, "patch_frames": 8}})
    assert "| patch | 8 x 32 (frames x mel bins) |" in oblong and "| preset | custom" in oblong


def test_model_card_states_the_objective_and_the_default_embedding(tmp_path):
    meta = metadata(MODEL_PRESETS["tiny"])
    card = model_card_text(meta)
    assert "| pre-training objective | not recorded |" in card
    assert "| default embedding | the final output, mean pooling (the library default): 192 values per clip |" in card
    old_run = model_card_text({**meta, "train": {"lr": 1e-3}})  # a run from before objectives: plain mae
    assert "| pre-training objective | mae |" in old_run
    chosen = model_card_text({**meta, "train": {"objective": "latent", "masks_per_clip": 4},
                              "embedding": {"layer": "concat", "pool": "meanstd"}})
    assert "| pre-training objective | latent, 4 masks per clip |" in chosen
    assert "| default embedding | every block, concatenated, meanstd pooling: 2,304 values per clip |" in chosen
