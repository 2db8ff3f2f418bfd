"""The world as files a person can listen to and look at: WAV clips, their factors, a spectrogram grid."""
from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf
import torch

from audiopg.audio.fbank import Fbank, FbankConfig
from audiopg.audio.preview import clip_cards
from audiopg.core.config import write_json
from audiopg.core.io import atomic_write, atomic_write_text
from audiopg.core.page import Page
from audiopg.synth.config import WorldConfig
from audiopg.synth.world import World


def write_world_clips(cfg: WorldConfig, n: int, seed: int, out: Path, device: torch.device,
                      html: bool = False) -> None:
    """``n`` clips of the world drawn with ``seed``: ``clip_*.wav`` (float), ``factors.jsonl`` (one line per
    clip), ``world.json`` (the resolved config) and ``spectrograms.png`` in ``out``; with ``html`` also
    ``index.html`` (:func:`world_page`)."""
    world = World(cfg, device)
    batch = world.sample(n, world.generator(seed))
    out.mkdir(parents=True, exist_ok=True)
    records = batch.records()
    width = len(str(n - 1))
    lines, names = [], []
    for i, (wave, rec) in enumerate(zip(batch.audio.cpu().numpy(), records)):
        name = f"clip_{i:0{width}d}.wav"
        atomic_write(out / name, lambda f, wave=wave: sf.write(f, wave, cfg.sample_rate, subtype="FLOAT", format="WAV"))
        lines.append(json.dumps({"file": name, **rec}))
        names.append(name)
    atomic_write_text(out / "factors.jsonl", "\n".join(lines) + "\n")
    write_json(out / "world.json", cfg)
    spectrogram_grid(batch.audio, records, cfg.sample_rate, out / "spectrograms.png")
    if html:
        world_page(cfg, seed, batch.audio, records, names).write(out / "index.html")


OVERVIEW = ("source", "f0", "event_count", "snr_db", "cutoff", "scene_count", "distance", "rt60")  # page's summary


def world_page(cfg: WorldConfig, seed: int, audio: torch.Tensor, records: list[dict], names: list[str]) -> Page:
    """The clips as a page: a player, the log-mel spectrogram and the factors of each, then the world's config."""
    page = Page(f"AudioPG world: {len(names)} clips, seed {seed}")
    page.text(f"{cfg.seconds:g} s clips at {cfg.sample_rate} Hz; the sources of this world: "
              f"{', '.join(cfg.source_names)}.  Players: 16-bit FLAC of each clip_*.wav; spectrograms: the "
              "128-bin log-mel features the model sees; factors: the clip's line of factors.jsonl.")
    page.table([{"clip": name, **{k: rec[k] for k in OVERVIEW if k in rec}} for name, rec in zip(names, records)])
    page.clips(clip_cards(audio, cfg.sample_rate, names, records))
    page.preformatted(json.dumps(cfg.to_dict(), indent=2), "world.json: the resolved world config")
    return page


def spectrogram_grid(audio: torch.Tensor, records: list[dict], sample_rate: int, path: Path) -> None:
    """One PNG: the log-mel spectrogram of every clip, titled with its source and f0."""
    import matplotlib  # heavy, and only for this figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fbank = FbankConfig(sample_rate=sample_rate, num_mel_bins=128)
    feats = Fbank(fbank).to(audio.device)(audio).cpu().numpy()
    n = len(feats)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (spec, rec) in enumerate(zip(feats, records)):
        ax = axes.flat[i]
        ax.axis("on")
        ax.imshow(spec.T, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, spec.shape[0] * fbank.frame_shift_ms / 1000, 0, spec.shape[1]), vmin=max(spec.min(), spec.max() - 80))
        detail = f"f0 {rec['f0']:.0f} Hz" if "f0" in rec else rec.get("noise_colour", "")
        ax.set_title(f"{i}: {rec['source']}, {detail}", fontsize=9)
        ax.set_xlabel("s", fontsize=8)
        ax.set_ylabel("mel bin", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=80, format="png"))
    plt.close(fig)
