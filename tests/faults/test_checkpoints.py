"""Fault cases: damaged checkpoints are refused at load, naming the file (and the tensor or key that is wrong)."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from audiopg.api.hear import load_model
from audiopg.audio.fbank import FbankConfig
from audiopg.core.config import to_dict
from audiopg.model import ModelConfig, ViTEncoder
from audiopg.model.checkpoint import METADATA_KEY, save_encoder
from audiopg.model.encoder import Encoder
from audiopg.synth import load_world_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_data import make_fsdd  # noqa: E402

torch.set_num_threads(1)

CONFIG = ModelConfig(num_frames=64, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                     decoder_num_heads=2)
META = {"model": to_dict(CONFIG), "fbank": to_dict(FbankConfig(num_mel_bins=128, target_frames=64)),
        "fbank_stats": {"mean": -6.25, "std": 4.5}, "world": load_world_config("paper").to_dict()}


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return ViTEncoder(CONFIG).state_dict()


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    t = np.arange(8000) / 16000
    sf.write(root / "a.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return root


def damaged(folder: Path, state: dict, **change) -> Path:
    """A run folder whose encoder.safetensors has ``change`` applied: {tensor name: new tensor or None}."""
    tensors = {k: v.clone() for k, v in state.items()}
    for key, value in change.items():
        key = key.replace("__", ".")
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    save_encoder(folder / "encoder.safetensors", tensors, META)
    return folder


def with_value(state: dict, key: str, value: float) -> torch.Tensor:
    t = state[key].clone()
    t.view(-1)[3] = value
    return t


def commands(ckpt: Path, audio: Path, out: Path) -> list[list]:
    """Every command that loads an encoder."""
    return [
        ["embed", audio, "--checkpoint", ckpt, "--out", out / "emb", "--no-progress"],
        ["export", ckpt, "--out", out / "model"],
        ["analyze", "--checkpoint", ckpt, "--out", out / "analysis", "--no-real", "--clips", "16"],
    ]


def guarded(out: Path, ckpt: Path) -> list[Path]:
    """What must survive a failed command: the checkpoint and an earlier result beside the outputs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "earlier.npy").write_text("earlier result\n")
    return [out, ckpt]


# ----------------------------------------------------------------------------- non-finite weights
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_by_every_loader(faults, tmp_path, state, audio, value):
    key = "blocks.1.mlp.fc1.weight"
    ckpt = damaged(tmp_path / "run", state, **{key: with_value(state, key, value)})
    out = tmp_path / "out"
    guard = guarded(out, ckpt)
    for args in commands(ckpt, audio, out):
        res = faults.cli(args, key, guard=guard)
        assert "NaN or infinite" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["earlier.npy"]
    faults.api(lambda: load_model(ckpt), key)
    faults.api(lambda: Encoder.from_pretrained(ckpt), [key, str(ckpt)])


def test_probe_refuses_non_finite_weights(faults, tmp_path, state):
    make_fsdd(tmp_path, digits=2, takes=3)
    key = "norm.weight"
    ckpt = damaged(tmp_path / "run", state, **{key: with_value(state, key, float("nan"))})
    faults.cli(["probe", "--task", "fsdd", "--data-root", tmp_path, "--checkpoint", ckpt, "--out", tmp_path / "o",
                "--baselines", "none", "--cache-dir", "none", "--quiet"], key)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- damaged files
def test_wrong_keys_and_shapes_are_listed(faults, tmp_path, state, audio):
    missing = damaged(tmp_path / "missing", state, norm__bias=None)
    faults.cli(["embed", audio, "--checkpoint", missing, "--out", tmp_path / "e"], "norm.bias")
    shape = damaged(tmp_path / "shape", state, norm__weight=torch.ones(17))
    faults.cli(["embed", audio, "--checkpoint", shape, "--out", tmp_path / "e"], "norm.weight (checkpoint (17,)")
    prefixed = tmp_path / "prefixed"
    save_encoder(prefixed / "encoder.safetensors", {f"encoder.{k}": v for k, v in state.items()}, META)
    res = faults.cli(["export", prefixed, "--out", tmp_path / "m"], "prefix")
    assert "encoder." in res.stderr and not (tmp_path / "m").exists()


def test_truncated_empty_and_random_files(faults, tmp_path, state, audio):
    good = damaged(tmp_path / "good", state) / "encoder.safetensors"
    blob = good.read_bytes()
    for name, data in (("cut-header", blob[:100]), ("cut-weights", blob[: len(blob) // 2]), ("empty", b""),
                       ("random", np.random.default_rng(0).bytes(4096))):
        path = tmp_path / name / "encoder.safetensors"
        path.parent.mkdir()
        path.write_bytes(data)
        faults.cli(["embed", audio, "--checkpoint", path, "--out", tmp_path / "e"], str(path))
        faults.cli(["export", path.parent, "--out", tmp_path / "m"], str(path))
        faults.api(lambda: load_model(path), str(path))
    assert not (tmp_path / "m").exists() and not (tmp_path / "e.npy").exists()


def test_a_pickle_renamed_to_safetensors_is_not_unpickled(faults, tmp_path, audio):
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "run" / "encoder.safetensors"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"weights": Payload()}))
    faults.cli(["embed", audio, "--checkpoint", path, "--out", tmp_path / "e"], str(path))
    torch.save({"norm.weight": torch.ones(16)}, path)  # torch's zip pickle
    faults.cli(["embed", audio, "--checkpoint", path, "--out", tmp_path / "e"], str(path))
    assert not marker.exists()


def test_metadata_faults(faults, tmp_path, state, audio):
    def write(name: str, metadata: dict | None) -> Path:
        path = tmp_path / name / "encoder.safetensors"
        path.parent.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
        return path

    cases = {
        "no-metadata": (None, METADATA_KEY),
        "bad-json": ({METADATA_KEY: "{not json"}, "JSON"),
        "no-model": ({METADATA_KEY: json.dumps({k: v for k, v in META.items() if k != "model"} | {"format": 1})},
                     "model"),
        "mask-ratio": ({METADATA_KEY: json.dumps({**META, "format": 1,
                                                  "model": {**META["model"], "mask_ratio": 0.0}})}, "mask_ratio"),
        "stats": ({METADATA_KEY: json.dumps({**META, "format": 1, "fbank_stats": {"mean": 0.0, "std": 0.0}})},
                  "fbank_stats"),
    }
    for name, (metadata, culprit) in cases.items():
        path = write(name, metadata)
        faults.cli(["embed", audio, "--checkpoint", path, "--out", tmp_path / "e"], culprit)
        faults.api(lambda: Encoder.from_pretrained(path), culprit)


def test_the_meta_device_is_refused(faults, tmp_path, state, audio):
    ckpt = damaged(tmp_path / "run", state)
    faults.api(lambda: Encoder.from_pretrained(ckpt, device="meta"), "meta")
    faults.api(lambda: load_model(ckpt, device="meta"), "meta")
    faults.cli(["embed", audio, "--checkpoint", ckpt, "--out", tmp_path / "e", "--device", "meta"], "meta")


def test_a_layer_the_checkpoint_lacks_is_named(faults, tmp_path, state, audio):
    ckpt = damaged(tmp_path / "run", state)
    make_fsdd(tmp_path, digits=2, takes=3)
    for args in (["embed", audio, "--checkpoint", ckpt, "--out", tmp_path / "e"],
                 ["export", ckpt, "--out", tmp_path / "m"],
                 ["probe", "--task", "fsdd", "--data-root", tmp_path, "--checkpoint", ckpt, "--out", tmp_path / "o",
                  "--baselines", "none", "--cache-dir", "none", "--quiet"],
                 ["analyze", "--checkpoint", ckpt, "--out", tmp_path / "a", "--no-real"]):
        faults.cli([*args, "--layer", "7"], "layer", guard=[ckpt])
    assert not any((tmp_path / name).exists() for name in ("e.npy", "m", "o", "a"))
