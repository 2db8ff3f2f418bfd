"""Hugging Face Hub: loading a repository id from the Hub cache, and what an upload would send (no network)."""
from __future__ import annotations

import inspect
import json
import socket
import sys

import numpy as np
import pytest
import torch
import yaml
from test_embed_cli import CONFIG, metadata

from audiopg.api.hub import plan_upload
from audiopg.cli.main import main
from audiopg.core.errors import CheckpointError
from audiopg.core.hub import is_repo_id, resolve_model_path
from audiopg.model import ViTEncoder
from audiopg.model.checkpoint import save_encoder
from audiopg.model.encoder import Encoder

hf = pytest.importorskip("huggingface_hub", reason="the hub extra is not installed (pip install audiopg[hub])")
hf_constants = pytest.importorskip("huggingface_hub.constants")

torch.set_num_threads(1)
MAIN, V1 = "a" * 40, "b" * 40  # commit hashes of two snapshots


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Offline, with a cache of our own, and any attempt to open a connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def save_tiny(folder, seed: int, **extra) -> None:
    torch.manual_seed(seed)
    save_encoder(folder / "encoder.safetensors", ViTEncoder(CONFIG).state_dict(), metadata(**extra))


@pytest.fixture
def hub_cache(tmp_path):
    """``owner/tiny`` laid out as ``snapshot_download`` leaves it: refs/main and refs/v1 -> two snapshots."""
    repo = tmp_path / "hub-cache" / "models--owner--tiny"
    for commit, seed in ((MAIN, 0), (V1, 1)):
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        save_tiny(snap, seed)
        (snap / "README.md").write_text("---\nlibrary_name: audiopg\n---\n# tiny\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v1").write_text(V1)
    return repo


def scene(enc: Encoder) -> np.ndarray:
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.3)
    return enc.embed(wave, 16000).scene.numpy()


def test_a_repository_id_loads_from_the_hub_cache_at_a_revision(hub_cache):
    enc = Encoder.from_pretrained("owner/tiny")
    assert enc.source == str(hub_cache / "snapshots" / MAIN / "encoder.safetensors")
    np.testing.assert_allclose(scene(enc), scene(Encoder.from_pretrained(hub_cache / "snapshots" / MAIN)), atol=0)
    for source, kwargs in (("owner/tiny", {"revision": "v1"}), ("owner/tiny@v1", {}), ("owner/tiny", {"revision": V1})):
        other = Encoder.from_pretrained(source, **kwargs)
        assert other.source == str(hub_cache / "snapshots" / V1 / "encoder.safetensors"), (source, kwargs)
    assert not np.allclose(scene(enc), scene(Encoder.from_pretrained("owner/tiny@v1")))
    with pytest.raises(CheckpointError, match="differs from revision='v2'"):
        Encoder.from_pretrained("owner/tiny@v1", revision="v2")


def test_offline_errors_say_what_was_looked_for_and_what_works(hub_cache, tmp_path):
    with pytest.raises(CheckpointError) as err:
        Encoder.from_pretrained("owner/missing")
    message = str(err.value)
    for fact in ("owner/missing", "no such local path", str(tmp_path / "hub-cache"), "HF_HUB_OFFLINE",
                 "local model folder"):
        assert fact in message, fact
    with pytest.raises(CheckpointError, match="owner/tiny at revision v9 .*HF_HUB_OFFLINE"):
        Encoder.from_pretrained("owner/tiny", revision="v9")


def test_local_paths_stay_local(hub_cache, tmp_path, monkeypatch):
    local = tmp_path / "owner" / "tiny"
    local.mkdir(parents=True)
    save_tiny(local, 1)
    monkeypatch.chdir(tmp_path)
    assert not is_repo_id("owner/tiny") and is_repo_id("owner/other") and not is_repo_id("run/encoder.safetensors")
    assert resolve_model_path("owner/tiny") == local.relative_to(tmp_path)  # an existing folder wins over the Hub
    with pytest.raises(CheckpointError, match="revision='v1' is for Hugging Face Hub ids"):
        Encoder.from_pretrained(local, revision="v1")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Encoder.from_pretrained(tmp_path / "nowhere")


def test_without_huggingface_hub_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=r"owner/tiny: no such local folder.*pip install audiopg\[hub\]"):
        Encoder.from_pretrained("owner/tiny")


# ----------------------------------------------------------------------------- upload
@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    save_tiny(folder, 0, train={"objective": "mae", "lr": 5e-4})
    (folder / "config.json").write_text(json.dumps({"world": "paper"}))
    (folder / "results.json").write_text(json.dumps({"fsdd": {"accuracy": 0.8125}, "esc50": {"accuracy": 0.43}}))
    return folder


@pytest.fixture
def fake_api(monkeypatch):
    """HfApi's write calls, checked against the real signatures and recorded instead of sent."""
    calls = []

    def record(name):
        real = inspect.signature(getattr(hf.HfApi, name))

        def call(self, *args, **kwargs):
            real.bind(self, *args, **kwargs)
            calls.append((name, args, kwargs))
            return "https://huggingface.co/owner/tiny/commit/0" if name == "upload_folder" else None
        return call

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(hf.HfApi, name, record(name))
    return calls


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_push_to_hub_sends_exactly_the_model_folder_and_its_card(run_dir, tmp_path, fake_api, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the upload API is faked; sockets still refuse
    out = tmp_path / "model"
    assert main(["export", str(run_dir), "--out", str(out), "--push-to-hub", "owner/tiny", "--revision", "dev",
                 "--private"]) == 0
    assert "uploaded README.md, config.json, encoder.safetensors, results.json to owner/tiny (branch dev)" in \
        capsys.readouterr().out
    assert [c[0] for c in fake_api] == ["create_repo", "create_branch", "upload_folder"]
    assert fake_api[0][1] == ("owner/tiny",) and fake_api[0][2]["private"] is True
    assert fake_api[1][1] == ("owner/tiny",) and fake_api[1][2]["branch"] == "dev"
    upload = fake_api[2][2]
    assert upload["repo_id"] == "owner/tiny" and upload["folder_path"] == out and upload["revision"] == "dev"
    assert upload["allow_patterns"] == ["README.md", "config.json", "encoder.safetensors", "results.json"]

    plan = plan_upload(out, "owner/tiny@dev", private=True)
    assert (plan.repo_id, plan.revision, plan.private) == ("owner/tiny", "dev", True)
    assert plan.card == (out / "README.md").read_text()
    meta = front_matter(plan.card)
    assert (meta["library_name"], meta["license"], meta["pipeline_tag"]) == ("audiopg", "mit", "feature-extraction")
    assert {"audiopg", "world-paper", "objective-mae"} <= set(meta["tags"])
    assert meta["audiopg"]["world"] == "paper" and meta["audiopg"]["objective"] == "mae"
    assert meta["audiopg"]["fbank"]["num_mel_bins"] == 128 and meta["audiopg"]["fbank_stats"] == {"mean": -6.25,
                                                                                                 "std": 4.5}
    results = {r["dataset"]["name"]: r["metrics"] for r in meta["model-index"][0]["results"]}
    assert results == {"fsdd": [{"type": "accuracy", "name": "accuracy", "value": 0.8125}],
                       "esc50": [{"type": "accuracy", "name": "accuracy", "value": 0.43}]}
    assert 'Encoder.from_pretrained("owner/tiny")' in plan.card


def test_dry_run_sends_nothing_and_bad_requests_fail_before_any_work(run_dir, tmp_path, fake_api, monkeypatch, capsys):
    out = tmp_path / "model"
    assert main(["export", str(run_dir), "--out", str(out), "--push-to-hub", "owner/tiny", "--dry-run"]) == 0
    assert "dry run: would upload README.md, config.json, encoder.safetensors, results.json" in capsys.readouterr().out
    assert fake_api == []
    for args, culprit in ((["--private"], "--private: only goes with --push-to-hub"),
                          (["--push-to-hub", "not a repo"], "--push-to-hub: expected a Hugging Face Hub repository"),
                          (["--push-to-hub", "owner/tiny"], "HF_HUB_OFFLINE is set")):
        assert main(["export", str(run_dir), "--out", str(tmp_path / "other"), *args]) == 2
        assert culprit in capsys.readouterr().err
        assert not (tmp_path / "other").exists()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "other"), "--push-to-hub", "owner/tiny"]) == 2
    assert "pip install audiopg[hub]" in capsys.readouterr().err
    assert fake_api == [] and not (tmp_path / "other").exists()


def test_plan_refuses_a_folder_that_is_not_a_model_folder(run_dir):
    with pytest.raises(Exception, match="no README.md; upload a model folder written by `audiopg export`"):
        plan_upload(run_dir, "owner/tiny")
