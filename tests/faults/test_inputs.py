"""Fault cases: bad audio (made on the fly) is refused naming the file, or used with a warning naming it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_cli

from audiopg.api.embed_files import embed_files
from audiopg.api.hear import get_scene_embeddings, load_model
from audiopg.audio.fbank import FbankConfig
from audiopg.audio.io import TruncatedAudioWarning, load_audio, load_audio_noting
from audiopg.core.config import to_dict
from audiopg.eval.datasets import load_dataset
from audiopg.eval.features import EncoderFeatures, extract_features
from audiopg.model import ModelConfig, ViTEncoder
from audiopg.model.checkpoint import save_encoder
from audiopg.model.encoder import Encoder
from audiopg.synth import load_world_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_data import make_fsdd  # noqa: E402

torch.set_num_threads(1)

SR = 16000
CONFIG = ModelConfig(num_frames=64, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                     decoder_num_heads=2)
META = {"model": to_dict(CONFIG), "fbank": to_dict(FbankConfig(num_mel_bins=128, target_frames=64)),
        "fbank_stats": {"mean": -6.25, "std": 4.5}, "world": load_world_config("paper").to_dict()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_encoder(folder / "encoder.safetensors", ViTEncoder(CONFIG).state_dict(), META)
    return folder


def tone(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([x * (c + 1) / channels for c in range(channels)], 1) if channels > 1 else x


def truncated_wav(path: Path, seconds: float = 1.0, keep_seconds: float = 0.03) -> Path:
    """A 16-bit WAV whose header promises ``seconds`` but that holds ``keep_seconds`` (a cut-off copy)."""
    sf.write(path, tone(seconds), SR, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: 44 + 2 * int(keep_seconds * SR)])
    return path


def embed(faults, ckpt, path, culprit, tmp_path, expect="clear"):
    (tmp_path / "earlier.txt").write_text("earlier result\n")
    res = faults.cli(["embed", path, "--checkpoint", ckpt, "--out", tmp_path / "emb", "--no-progress"], culprit,
                     guard=[tmp_path / "earlier.txt", path], expect=expect)
    if expect == "clear":
        assert not (tmp_path / "emb.npy").exists()
    return res


# ----------------------------------------------------------------------------- files that are refused
def bad_files(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must say)."""
    files = {}
    (root / "empty.wav").write_bytes(b"")
    files["empty"] = (root / "empty.wav", "empty")
    (root / "random.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    files["random bytes"] = (root / "random.wav", "not a readable audio file")
    sf.write(root / "no-samples.wav", np.zeros((0, 1), np.float32), SR)
    files["no samples"] = (root / "no-samples.wav", "0 samples")
    x = tone(0.5).astype(np.float32)
    x[100] = np.nan
    sf.write(root / "nan.wav", x, SR, subtype="FLOAT")
    files["NaN samples"] = (root / "nan.wav", "NaN")
    sf.write(root / "huge.wav", np.full(SR // 10, 1e39), SR, subtype="DOUBLE")
    files["beyond float32"] = (root / "huge.wav", "float32")
    (root / "folder.wav").mkdir()
    files["a folder"] = (root / "folder.wav", "folder")
    return files


def test_bad_audio_files_are_refused_naming_them(faults, tmp_path, ckpt):
    root = tmp_path / "audio"
    root.mkdir()
    for name, (path, what) in bad_files(root).items():
        res = embed(faults, ckpt, path, str(path), tmp_path)
        assert what in res.stderr, name
        with pytest.raises(Exception, match=what):
            load_audio(path)


def test_float64_beyond_float32_is_refused_by_the_api(ckpt):
    enc = Encoder.from_pretrained(ckpt)
    with pytest.raises(ValueError, match="beyond float32's range"):
        enc.embed(np.full(SR // 2, 1e39), SR)
    with pytest.raises(ValueError, match="NaN or infinite"):
        enc.embed(np.full(SR // 2, np.nan), SR)
    model = load_model(ckpt)
    with pytest.raises(ValueError, match="beyond float32's range"):
        get_scene_embeddings(torch.full((1, SR // 2), 1e39, dtype=torch.float64), model)
    assert np.isfinite(enc.embed(np.full(SR // 2, 1e30), SR).scene.numpy()).all()  # large but in range: fine


# ----------------------------------------------------------------------------- files that are used, with a word
def test_a_truncated_wav_is_embedded_with_a_warning(faults, tmp_path, ckpt):
    path = truncated_wav(tmp_path / "cut.wav")
    with pytest.warns(TruncatedAudioWarning, match=r"cut.wav: truncated: the header promises 1 s .* holds 0.03 s"):
        assert load_audio(path).shape == (480,)
    wave, note = load_audio_noting(path)
    assert wave.shape == (480,) and "cut.wav: truncated" in note
    assert load_audio_noting(tmp_path / "cut.wav", 8000)[1] is not None
    sf.write(tmp_path / "whole.wav", tone(0.5), SR, subtype="PCM_16")
    assert load_audio_noting(tmp_path / "whole.wav")[1] is None
    res = embed(faults, ckpt, path, "cut.wav: truncated", tmp_path, expect="warned")
    assert "1 truncated file(s)" in res.stderr
    assert np.isfinite(np.load(tmp_path / "emb.npy")).all()


def test_truncated_aiff_and_au_are_noticed(tmp_path):
    for ext in ("aiff", "au"):
        path = tmp_path / f"x.{ext}"
        sf.write(path, tone(1.0), SR, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
        wave, note = load_audio_noting(path)
        assert note is not None and "promises 1 s" in note, ext


@pytest.mark.parametrize("name,data,sr", [
    ("8ch.wav", tone(0.5, SR, 8), SR),
    ("192k.wav", tone(0.5, 192000), 192000),
    ("one-sample.wav", np.array([0.25]), SR),
    ("ten-minutes.flac", np.tile(tone(1.0, 8000), 600), 8000),
    ("silence.wav", np.zeros(SR // 2), SR),
])
def test_unusual_but_valid_audio_is_embedded(tmp_path, ckpt, name, data, sr):
    sf.write(tmp_path / name, data, sr)
    res = run_cli(["embed", tmp_path / name, "--checkpoint", ckpt, "--out", tmp_path / "emb", "--no-progress"])
    assert res.rc == 0, res.stderr
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (1, 16) and np.isfinite(emb).all()


# ----------------------------------------------------------------------------- embeddings are checked before written
def nan_encoder() -> Encoder:
    vit = ViTEncoder(CONFIG)
    with torch.no_grad():
        vit.norm.weight[0] = float("nan")  # in memory: loading would refuse it
    return Encoder(vit, META, source="nan-model")


def test_non_finite_embeddings_are_never_written(faults, tmp_path):
    sf.write(tmp_path / "a.wav", tone(0.5), SR)
    faults.api(lambda: embed_files([tmp_path / "a.wav"], nan_encoder()), "a.wav")
    make_fsdd(tmp_path, digits=2, takes=3)
    ds = load_dataset("fsdd", tmp_path)
    faults.api(lambda: extract_features(ds, [EncoderFeatures("pretrained", nan_encoder())], progress=False),
               str(ds.items[0].path))


# ----------------------------------------------------------------------------- the probe counts truncated files
def test_probe_reports_truncated_files(faults, tmp_path):
    make_fsdd(tmp_path, digits=2, takes=6)
    cut = sorted((tmp_path / "fsdd" / "recordings").glob("*.wav"))[4]
    sf.write(cut, tone(0.25, 8000), 8000, subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[: 44 + 2 * 400])
    args = ["probe", "--task", "fsdd", "--data-root", tmp_path, "--baselines", "handcrafted", "--no-pretrained",
            "--cache-dir", tmp_path / "cache"]
    for out, quiet in (("o1", []), ("o2", ["--quiet"])):  # the second reads the features from the cache
        res = faults.cli([*args, "--out", tmp_path / out, *quiet], cut.name, expect="warned")
        assert "1 truncated file(s)" in res.stderr
        ds = json.loads((tmp_path / out / "results.json").read_text())["dataset"]
        assert ds["truncated"] == [str(cut)]
        assert any("truncated" in note for note in ds["notes"])


# ----------------------------------------------------------------------------- dataset metadata
@pytest.mark.parametrize("cell,what", [("-1", "must be >= 0"), ("x", "not an integer"), ("", "not an integer")])
def test_a_bad_metadata_cell_names_its_row(faults, tmp_path, cell, what):
    (tmp_path / "meta").mkdir()
    (tmp_path / "audio").mkdir()
    rows = ["filename,fold,target,category,src_file"]
    for i in range(3):
        sf.write(tmp_path / "audio" / f"{i}.wav", tone(0.1), SR)
        rows.append(f"{i}.wav,1,{cell if i == 1 else 0},dog,{i}")
    (tmp_path / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    res = faults.cli(["probe", "--task", "esc50", "--data-root", tmp_path, "--out", tmp_path / "o",
                      "--baselines", "handcrafted", "--no-pretrained", "--quiet"], "row 3: column 'target'",
                     guard=[tmp_path / "meta"])
    assert what in res.stderr and not (tmp_path / "o").exists()
