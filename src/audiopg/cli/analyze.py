"""``audiopg analyze``: what an encoder's embeddings know about the world's factors, and how it is laid out.

    audiopg analyze --checkpoint runs/tiny --out runs/tiny/analysis [--clips 512] [--seed 0]
                    [--device cpu] [--no-baseline] [--fsdd PATH | --no-real]

Steps (numbers in :mod:`audiopg.analysis.decoding`, probe sets in :mod:`audiopg.analysis.probesets`):

1. probe sets from the encoder's training world, clips as long as its window: a random set and
   one sweep per factor;
2. embeddings of every clip at every layer (mean-pooled patch tokens);
3. decodability per layer (ridge R^2 / logistic accuracy, nested group-CV), probe-direction angles
   with chance levels, principal angles of rank-k probe subspaces, units x factors MI;
4. the same for the same architecture randomly initialized (unless ``--no-baseline``);
5. a real-audio check where FSDD is found: the synthetic f0 probe applied to YIN-measured voiced
   segments of spoken digits;
6. ``report.md`` (tables, links to the figures), ``analysis.json`` (every number) and PNGs in ``--out``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from audiopg.core.errors import AudioPGError, ConfigError
from audiopg.core.io import atomic_write_text
from audiopg.eval.report import jsonable

MODEL_LABELS = {"trained": "trained", "random_init": "random init"}
INTENSITY = ("event_level_db", "snr_db", "level_db")
FSDD_ENV = "AUDIOPG_DATA"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="decodability, orthogonality and MI of the world's factors in an encoder's layers, vs random init",
        description="Probe an encoder with clips of the procedural world whose factors are known: per-layer "
                    "decodability, angles between factor directions (with chance levels), mutual information, "
                    "figures, the same for a randomly initialized copy, and a real-audio f0 check (FSDD).",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="run folder, model folder or encoder.safetensors")
    p.add_argument("--out", required=True, type=Path, help="output folder (report.md, analysis.json, PNGs)")
    p.add_argument("--clips", type=int, default=512, help="clips in the random probe set (default 512)")
    p.add_argument("--bases", type=int, default=8, help="base clips per sweep (default 8; the f0 sweep rounds up to a multiple of 3)")
    p.add_argument("--points", type=int, default=8, help="values per sweep (default 8)")
    p.add_argument("--f0-points", type=int, default=12, help="values of the f0 sweep (default 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed of probe sets, splits, baseline init (default 0)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto (default cpu)")
    p.add_argument("--no-baseline", action="store_true", help="skip the randomly initialized baseline")
    p.add_argument("--layer", type=int, default=-1, help="layer for angle figures, MI and PCA (default -1: the last)")
    p.add_argument("--folds", type=int, default=5, help="outer cross-validation folds (default 5)")
    p.add_argument("--permutations", type=int, default=20, help="shuffled-target probes per factor (default 20)")
    p.add_argument("--rank", type=int, default=3, help="rank k of the probe subspaces (default 3)")
    p.add_argument("--mi-units", type=int, default=256, help="units in the MI heatmap, a random subset beyond (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    p.add_argument("--fsdd", type=Path, help=f"FSDD folder (default: ${FSDD_ENV}/fsdd, ../shared/data/fsdd, /work/shared/data/fsdd)")
    p.add_argument("--real-clips", type=int, default=300, help="real voiced segments to use at most (default 300)")
    p.add_argument("--no-real", action="store_true", help="skip the real-audio check")
    p.set_defaults(func=run_analyze)


# ----------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(f"[analyze {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _check_args(args) -> None:
    for key, low in (("clips", 16), ("bases", 2), ("points", 3), ("f0_points", 3), ("folds", 2), ("permutations", 0),
                     ("rank", 1), ("mi_units", 1), ("batch_size", 1), ("real_clips", 10)):
        value = getattr(args, key)
        if value < low:
            raise ConfigError(key.replace("_", "-"), f"must be >= {low}, got {value}")


def find_fsdd(explicit: Path | None = None) -> Path | None:
    """The FSDD folder: ``explicit`` (must exist), else ``$AUDIOPG_DATA/fsdd``, ``../shared/data/fsdd`` beside
    the checkout or the working directory, ``/work/shared/data/fsdd``; None when none holds WAV files."""
    if explicit is not None:
        if not explicit.is_dir():
            raise AudioPGError(f"{explicit}: --fsdd is not a folder")
        return explicit
    repo = Path(__file__).resolve().parents[3]
    candidates = []
    if os.environ.get(FSDD_ENV):
        candidates.append(Path(os.environ[FSDD_ENV]) / "fsdd")
    candidates += [repo.parent / "shared" / "data" / "fsdd", Path.cwd().parent / "shared" / "data" / "fsdd",
                   Path("/work/shared/data/fsdd")]
    for c in candidates:
        if c.is_dir() and next(c.rglob("*.wav"), None) is not None:
            return c
    return None


def _speaker(path: str) -> str:
    parts = Path(path).stem.split("_")
    return parts[1] if len(parts) >= 3 else Path(path).parent.name


def embed_sets(encoder, sets, batch_size: int, chunk: int = 128) -> dict[str, np.ndarray]:
    """(N, depth, D) float32 embeddings of every probe set, every layer."""
    out = {}
    for s in sets:
        parts = []
        for i in range(0, len(s), chunk):
            emb = encoder.embed(s.audio[i:i + chunk], s.sample_rate, layer="all", pool="mean",
                                batch_size=batch_size, normalize=s.normalize)
            parts.append(emb.scene.float().cpu().numpy())
        out[s.name] = np.concatenate(parts)
    return out


# ----------------------------------------------------------------------------- real audio
def prepare_real(args, sample_rate: int) -> tuple[list | None, dict[str, Any]]:
    """Stable voiced FSDD segments, or (None, note) when skipped."""
    from audiopg.analysis.pitch import voiced_clips

    if args.no_real:
        return None, {"skipped": "--no-real"}
    root = find_fsdd(args.fsdd)
    if root is None:
        return None, {"skipped": f"no FSDD found (set --fsdd or ${FSDD_ENV}/fsdd)"}
    files = sorted(root.rglob("*.wav"))
    order = np.random.default_rng(args.seed).permutation(len(files))
    clips, counts = [], {"files": 0, "unreadable": 0, "no_segment": 0}
    for start in range(0, len(files), 200):  # shuffled files until enough segments
        batch, c = voiced_clips([files[i] for i in order[start:start + 200]], sample_rate)
        clips += batch
        for k in counts:
            counts[k] += c[k]
        if len(clips) >= args.real_clips:
            break
    clips = clips[: args.real_clips]
    seconds = np.array([len(c.audio) / c.sample_rate for c in clips]) if clips else np.zeros(1)
    note = {"root": str(root), "wav_files": len(files), **counts, "segments": len(clips),
            "segment_seconds": {"min": float(seconds.min()), "median": float(np.median(seconds)),
                                "max": float(seconds.max())},
            "selection": "per file its longest run of YIN-voiced frames (threshold 0.15, energy within 40 dB of "
                         "the file's loudest frame, 60-500 Hz) whose pitch stays within 1 semitone of the run's "
                         "median, 0.2-0.5 s; target = log2 of that median"}
    if len(clips) < 10:
        return None, {**note, "skipped": f"only {len(clips)} stable voiced segments found"}
    return clips, note


def real_check(encoder, emb: Mapping[str, np.ndarray], sets, clips, args, layer: int) -> dict[str, Any]:
    from audiopg.analysis.decoding import transfer_probe

    by_name = {s.name: s for s in sets}
    X_real = np.concatenate([
        encoder.embed([c.audio for c in clips[i:i + 128]], clips[0].sample_rate, layer="all",
                      batch_size=args.batch_size).scene.float().cpu().numpy()
        for i in range(0, len(clips), 128)])
    y_real = np.log2([c.f0 for c in clips])
    speakers = [_speaker(c.path) for c in clips]
    groups_real = {"recording": np.arange(len(clips))}
    if len(set(speakers)) >= 2:
        groups_real["speaker"] = np.unique(speakers, return_inverse=True)[1]
    Xs, ys, gs = [], [], []
    offset = 0
    for name in ("random", "sweep_f0"):
        if name not in by_name:
            continue
        s = by_name[name]
        m = s.valid("log2_f0")
        Xs.append(emb[name][m])
        ys.append(s.targets["log2_f0"][m])
        gs.append(s.groups[m] + offset)
        offset += int(s.groups.max()) + 1
    X_syn, y_syn, g_syn = np.concatenate(Xs), np.concatenate(ys), np.concatenate(gs)
    per_layer = [transfer_probe(X_syn[:, l], y_syn, g_syn, X_real[:, l], y_real, groups_real, args.folds, args.seed)
                 for l in range(X_real.shape[1])]
    return {
        "clips": len(clips), "speakers": sorted(set(speakers)), "synthetic_clips": int(len(y_syn)),
        "f0_hz": {"min": float(2 ** y_real.min()), "median": float(2 ** np.median(y_real)), "max": float(2 ** y_real.max())},
        "per_layer": per_layer, "layer": layer,
        "plot": (y_real, per_layer[layer]["pred"]),
    }


# ----------------------------------------------------------------------------- report
def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}"


def _best(values: list[float]) -> tuple[int, float]:
    arr = np.array([v if v is not None else -np.inf for v in values], dtype=float)
    i = int(np.argmax(arr))
    return i, float(arr[i])


def write_report(path: Path, info: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
                 real: Mapping[str, Any], figures: Mapping[str, str]) -> None:
    from audiopg.analysis.plots import PRETTY

    models = list(results)
    labels = [MODEL_LABELS.get(m, m) for m in models]
    first = results[models[0]]
    L, layer = first["layers"], first["analysis_layer"]
    lines: list[str] = []
    w = lines.append
    w(f"# Encoder analysis: `{info['checkpoint']}`\n")
    w(f"Model: {info['model']['depth']} layers, width {info['model']['embed_dim']}, window {info['window_seconds']:g} s at "
      f"{info['sample_rate']} Hz.  Models: " + ", ".join(f"**{x}**" for x in labels)
      + (" (same architecture, fresh MAE initialisation, seed "
         f"{info['seed']})" if "random_init" in results else "") + f".  Runtime {info['runtime_s']:.0f} s.\n")
    w("Layer *i* = output of block *i* mean-pooled over patch tokens; the last layer is after the final "
      f"LayerNorm.  Angles, MI and PCA use layer **{layer + 1}** of {L}.\n")
    w("## Probe sets\n")
    w("| set | clips | groups | what varies |\n|---|---:|---:|---|")
    for name, s in info["probe_sets"].items():
        w(f"| {name} | {s['clips']} | {s['groups']} | {s['description']} |")
    for name, why in info.get("skipped_sweeps", {}).items():
        w(f"| sweep_{name} | – | – | skipped: {why} |")
    w("")

    # ---- decodability
    w("## 1. Decodability\n")
    w("Cross-validated ridge R² (continuous) and logistic accuracy (categorical), nested group-CV "
      f"({info['folds']} outer folds; sweeps grouped by base clip so no base clip is on both sides; penalty by inner CV). "
      "*shuffled* = the same probe on shuffled targets at the analysis layer (chance, ≈ 0 for R²).\n")
    w(f"![decodability per layer]({figures['decoding']})\n")
    w(f"Sweeps: *R²* = across base clips (the probe must give the factor's value on an unseen base clip); "
      "*within* = after centering embeddings and targets on each base clip's mean (does the factor move every base "
      f"clip the same way?).  *shuffled*: {labels[0]}'s probe on shuffled targets at layer {layer + 1}.\n")
    w("| factor | probe set | " + " | ".join(f"{lab}: best (layer) | {lab}: layer {layer + 1} | {lab}: within, layer {layer + 1}"
                                          for lab in labels) + " | shuffled |")
    w("|---|---|" + "---:|---:|---:|" * len(labels) + "---:|")
    for set_name, entries in first["decoding"].items():
        for target, rec in entries.items():
            if "r2" not in rec:
                continue
            cells = []
            for m in models:
                r = results[m]["decoding"][set_name][target]
                i, b = _best(r["r2"])
                cells += [f"{_f(b)} ({i + 1})", _f(r["r2"][layer]),
                          _f(r["r2_within"][layer]) if "r2_within" in r else "–"]
            w(f"| {PRETTY.get(target, target)} | {set_name} | " + " | ".join(cells) + f" | {_f(rec.get('r2_shuffled'))} |")
    w("")
    w("| categorical factor | probe set | classes | chance | " + " | ".join(f"{lab}: best (layer) | {lab}: layer {layer + 1}" for lab in labels)
      + " | shuffled |")
    w("|---|---|---:|---:|" + "---:|---:|" * len(labels) + "---:|")
    for set_name, entries in first["decoding"].items():
        for target, rec in entries.items():
            if "accuracy" not in rec:
                continue
            cells = []
            for m in models:
                r = results[m]["decoding"][set_name][target]
                i, b = _best(r["accuracy"])
                cells += [f"{_f(b)} ({i + 1})", _f(r["accuracy"][layer])]
            w(f"| {PRETTY.get(target, target)} | {set_name} | {rec['classes']} | {_f(rec['chance'])} | " + " | ".join(cells)
              + f" | {_f(rec.get('accuracy_shuffled'))} |")
    skipped = [(s, t, r["skipped"]) for s, e in first["decoding"].items() for t, r in e.items() if "skipped" in r]
    for s, t, why in skipped:
        w(f"\n*{t} on {s} skipped: {why}.*")
    w("")

    # ---- orthogonality
    ch = first["chance"]["random_direction"]
    sub = first["chance"]["random_subspace"]
    w(f"## 2. Orthogonality (layer {layer + 1})\n")
    w("Directions are ridge coefficient vectors in the *standardized* embedding space (units z-scored with the "
      "random set's mean and std at that layer), unit length.  **Controlled**: each factor's direction from its own "
      "sweep after removing every base clip's mean (only that factor changes).  **Joint**: from the random set. "
      "The angle keeps the factor's sign (0° same direction, 90° orthogonal, 180° opposite).  *Encoding* angle: "
      "between the per-unit slopes of the embedding on the factor (where the embedding moves), which can differ "
      "from decoding directions when factors share units.\n")
    w(f"Chance levels: two uniformly random directions in D = {ch['dim']}: mean 90°, sd {ch['std']:.2f}° "
      f"(≈ 1/√D rad = {ch['std_approx_1_over_sqrt_dim']:.2f}°), 95 % within [{ch['q2.5']:.1f}°, {ch['q97.5']:.1f}°]"
      + (f" (sampled: mean {ch['sampled']['mean']:.2f}°, sd {ch['sampled']['std']:.2f}°)" if "sampled" in ch else "")
      + f".  Random {sub['k']}-dimensional subspaces: smallest principal angle mean {sub['smallest']['mean']:.1f}° "
      f"(95 % [{sub['smallest']['q2.5']:.1f}°, {sub['smallest']['q97.5']:.1f}°]).  Permutation null: the same probes "
      f"fit on shuffled targets ({info['permutations']} per factor, all pairs), per pair below; its spread is wider than "
      "the random-direction one because ridge probes lean towards the high-variance units.  Effective dimension "
      "(participation ratio) of the random set's embedding at this layer: "
      + ", ".join(f"{lab} {results[m]['participation_ratio'][layer]:.1f}" for m, lab in zip(models, labels)) + ".\n")
    w(f"![angle matrices]({figures['angles']})\n")
    w("**f0 against intensity** (controlled directions; null = shuffled-target probes, mean [95 %]; split-half = "
      "angle between each factor's directions fit on two halves of its base clips, the sampling-noise floor below which "
      "no angle can be told from 0°; joint = the same pair's decoding angle from the random set):\n")
    w("| pair | model | decoding angle | null | z | split-half f0 / other | encoding angle | null | principal angles (k="
      + str(info["rank"]) + ") | null smallest | joint |")
    w("|---|---|---:|---|---:|---|---:|---|---|---|---:|")
    for m, lab in zip(models, labels):
        ang = results[m]["angles"]["controlled"][layer]
        joint = results[m]["angles"]["joint"][layer] or {"pairs": {}}
        if not ang:
            continue
        for other in INTENSITY:
            rec = ang["pairs"].get(f"log2_f0|{other}") or ang["pairs"].get(f"{other}|log2_f0")
            if rec is None:
                continue
            nd, ne, npa = rec["null_decode"], rec["null_encode"], rec["null_principal_smallest"]
            sh = ang.get("split_half", {})
            jrec = joint["pairs"].get(f"log2_f0|{other}") or joint["pairs"].get(f"{other}|log2_f0") or {}
            w(f"| f0 vs {PRETTY.get(other, other)} | {lab} | {_f(rec['decode'], 1)}° | {_f(nd.get('mean'), 1)} "
              f"[{_f(nd.get('q2.5'), 1)}, {_f(nd.get('q97.5'), 1)}] | {_f(rec.get('decode_z'), 2)} | "
              f"{_f(sh.get('log2_f0', {}).get('decode'), 0)}° / {_f(sh.get(other, {}).get('decode'), 0)}° | "
              f"{_f(rec['encode'], 1)}° | "
              f"{_f(ne.get('mean'), 1)} [{_f(ne.get('q2.5'), 1)}, {_f(ne.get('q97.5'), 1)}] | "
              + ", ".join(f"{a:.1f}°" for a in rec["principal"]) + f" | {_f(npa.get('mean'), 1)} "
              f"[{_f(npa.get('q2.5'), 1)}, {_f(npa.get('q97.5'), 1)}] | "
              + (f"{_f(jrec.get('decode'), 1)}°" if jrec else "–") + " |")
    w("")
    w("f0 against intensity per layer (controlled decoding angle, degrees):\n")
    pairs = [o for o in INTENSITY if first["angles"]["controlled"][layer]
             and f"log2_f0|{o}" in first["angles"]["controlled"][layer]["pairs"]]
    if pairs:
        w("| layer | " + " | ".join(f"{lab}: f0 vs {PRETTY.get(o, o)}" for lab in labels for o in pairs) + " |")
        w("|---:|" + "---:|" * (len(labels) * len(pairs)))
        for l in range(L):
            cells = []
            for m in models:
                ang = results[m]["angles"]["controlled"][l]
                for o in pairs:
                    cells.append(_f(ang["pairs"][f"log2_f0|{o}"]["decode"], 1) if ang else "–")
            w(f"| {l + 1} | " + " | ".join(cells) + " |")
        w("")
    w("All controlled pairs at this layer (decoding angle; * = outside the permutation null's 95 % range):\n")
    for m, lab in zip(models, labels):
        ang = results[m]["angles"]["controlled"][layer]
        if not ang:
            continue
        items = []
        for key, rec in ang["pairs"].items():
            a, b = key.split("|")
            nd = rec["null_decode"]
            star = "*" if nd.get("n") and not (nd["q2.5"] <= rec["decode"] <= nd["q97.5"]) else ""
            items.append(f"{PRETTY.get(a, a)} / {PRETTY.get(b, b)} {rec['decode']:.0f}°{star}")
        w(f"- **{lab}**: " + "; ".join(items))
    w("")

    # ---- MI
    w(f"## 3. Mutual information (random set, layer {layer + 1})\n")
    w("k-NN (Kraskov, k = 3) MI between each unit and each factor, in nats.  Concentration of a unit = 1 − "
      "(entropy of its MI spread over the factors) / log(#factors): 1 = all its information is about one factor, 0 = "
      "evenly spread; averaged over units weighted by their total MI.  Gap = MI of the best unit minus the runner-up "
      "(MIG-style), relative to the best.\n")
    w(f"![MI heatmap]({figures['mi']})\n")
    mi_factors = first["mi"]["factors"]
    w("| factor | " + " | ".join(f"{lab}: top MI (unit) | {lab}: rel. gap" for lab in labels) + " |")
    w("|---|" + "---:|---:|" * len(labels))
    for f in mi_factors:
        cells = []
        for m in models:
            pf = results[m]["mi"]["per_factor"][f]
            unit = results[m]["mi"]["units"][pf["top_unit_index"]] if pf["top_unit_index"] >= 0 else -1
            cells += [f"{_f(pf['top'])} ({unit})", _f(pf["gap_relative"], 2)]
        w(f"| {PRETTY.get(f, f)} | " + " | ".join(cells) + " |")
    w("\nMI-weighted mean concentration: " + ", ".join(
        f"{lab} {_f(results[m]['mi']['concentration_weighted'], 3)}" for m, lab in zip(models, labels)) + ".\n")

    # ---- figures
    w("## 4. Figures\n")
    w(f"- PCA of embeddings (layer {layer + 1}), coloured by f0 and by intensity: ![pca]({figures['pca']})")
    w(f"- f0 sweep trajectories in the top principal components (centered within base clip): ![f0 trajectory]({figures['trajectory']})")
    w(f"- First layer's patch filters (patch-embedding conv weights, 16×16, x = time, y = mel): ![filters]({figures['filters']})")
    w("")

    # ---- real audio
    w("## 5. Real audio: f0 of spoken digits (FSDD)\n")
    if real.get("skipped"):
        w(f"Skipped: {real['skipped']}.\n")
    else:
        sec = real.get("segment_seconds", {})
        w(f"{real['segments']} stable voiced segments from {real['files']} of {real['wav_files']} recordings in `{real['root']}` "
          f"({real['selection']}; durations {_f(sec.get('min'), 2)}–{_f(sec.get('max'), 2)} s, median "
          f"{_f(sec.get('median'), 2)} s: spoken digits rarely hold one pitch for 0.5 s).  The data is only read, never copied.  The *transferred* probe is a ridge fit on the "
          "world's tonal clips (random set and f0 sweep) in their standardized space and applied unchanged; "
          "R² needs offset and scale to transfer, correlation does not.  *Real CV*: ridge fit on the real segments, "
          "cross-validated by recording and leave-speakers-out.\n")
        if figures.get("real"):
            w(f"![real transfer]({figures['real']})\n")
        w("| model | f0 range (Hz) | layer | transferred R² | transferred r | slope | real CV R² (by recording) | real CV R² (by speaker) |")
        w("|---|---|---:|---:|---:|---:|---:|---:|")
        for m, lab in zip(models, labels):
            rr = results[m].get("real_audio")
            if not rr:
                continue
            rng_txt = f"{rr['f0_hz']['min']:.0f}–{rr['f0_hz']['max']:.0f}"
            for l, rec in enumerate(rr["per_layer"]):
                w(f"| {lab} | {rng_txt} | {l + 1} | {_f(rec['transfer_r2'])} | {_f(rec['transfer_corr'])} | "
                  f"{_f(rec['transfer_slope'], 2)} | {_f(rec.get('real_cv_r2_recording'))} | {_f(rec.get('real_cv_r2_speaker'))} |")
        w("")
    w("## Files\n")
    w("- `analysis.json`: every number above (and per-layer angle matrices, nulls, MI matrices).")
    for key, name in figures.items():
        w(f"- `{name}`")
    atomic_write_text(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- main
def run_analyze(args) -> int:
    import json

    import torch

    from audiopg.analysis import plots
    from audiopg.analysis.decoding import analyze_layers
    from audiopg.analysis.probesets import make_probe_sets, world_config_for_encoder
    from audiopg.model.encoder import Encoder

    _check_args(args)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = Encoder.from_pretrained(args.checkpoint, device=args.device)
    meta = encoder.metadata
    L = encoder.depth
    if not -L <= args.layer < L:
        raise ConfigError("layer", f"must be in [-{L}, {L}), got {args.layer}")
    layer = args.layer % L
    world_cfg = world_config_for_encoder(meta.get("world"), encoder.window_seconds)
    clips, real_note = prepare_real(args, encoder.sample_rate)
    _log("real audio: " + (real_note.get("skipped") or f"{real_note['segments']} segments"))
    _log(f"{args.checkpoint}: {L} layers x {encoder.embedding_size}, window {encoder.window_seconds:g} s; building probe sets")
    sets, skipped = make_probe_sets(world_cfg, clips=args.clips, bases=args.bases, points=args.points,
                                    f0_points=args.f0_points, seed=args.seed, device="cpu")
    _log("probe sets: " + ", ".join(f"{s.name} ({len(s)})" for s in sets))

    encoders: dict[str, Any] = {"trained": encoder}
    if not args.no_baseline:
        encoders["random_init"] = Encoder.from_pretrained(args.checkpoint, device=args.device, reinit=True, seed=args.seed)
    results: dict[str, dict] = {}
    kept: dict[str, dict[str, np.ndarray]] = {}
    real_points = {}
    timing: dict[str, float] = {}
    for key, enc in encoders.items():
        t = time.time()
        emb = embed_sets(enc, sets, args.batch_size)
        timing[f"{key}_embed_s"] = time.time() - t
        _log(f"{MODEL_LABELS[key]}: embedded {sum(len(s) for s in sets)} clips in {timing[f'{key}_embed_s']:.0f} s; analysing")
        t = time.time()
        res = analyze_layers(emb, sets, analysis_layer=layer, folds=args.folds, permutations=args.permutations,
                             k=args.rank, mi_units=args.mi_units, seed=args.seed, log=_log)
        if clips:
            rr = real_check(enc, emb, sets, clips, args, layer)
            y, pred = rr.pop("plot")
            rec = rr["per_layer"][layer]
            real_points[MODEL_LABELS[key]] = (y, pred, f"layer {layer + 1}: R² {rec['transfer_r2']:.2f}, r {rec['transfer_corr']:.2f}")
            res["real_audio"] = rr
        timing[f"{key}_analysis_s"] = time.time() - t
        results[key] = res
        kept[key] = {name: e[:, layer] for name, e in emb.items()}
        kept[key]["_filters"] = enc.model.patch_embed.proj.weight.detach().float().cpu().numpy()

    # ---- figures
    _log("figures")
    by_name = {s.name: s for s in sets}
    labelled = {MODEL_LABELS[k]: v for k, v in results.items()}
    figures = {"decoding": "decoding_per_layer.png", "angles": "angles.png", "pca": "pca.png",
               "trajectory": "f0_trajectory.png", "filters": "patch_filters.png", "mi": "mi_heatmap.png"}
    plots.plot_decoding(labelled, out / figures["decoding"])
    plots.plot_angles(labelled, layer, out / figures["angles"])
    rs = by_name["random"]
    pca_panels = {}
    for key in results:
        items = [("random set; colour: log2 f0", kept[key]["random"], rs.targets["log2_f0"], None),
                 ("random set; colour: SNR (dB)", kept[key]["random"], rs.targets["snr_db"], None)]
        if "sweep_event_level" in by_name:
            s = by_name["sweep_event_level"]
            items.append(("event-level sweep (random set's PCs)\ncolour: quieter event (dB)",
                          kept[key]["sweep_event_level"], s.targets["event_level_db"], kept[key]["random"]))
        if "sweep_level" in by_name:
            s = by_name["sweep_level"]
            items.append(("abs.-level sweep (random set's PCs)\ncolour: level (dBFS)",
                          kept[key]["sweep_level"], s.targets["level_db"], kept[key]["random"]))
        pca_panels[MODEL_LABELS[key]] = items
    plots.plot_pca(pca_panels, out / figures["pca"])
    if "sweep_f0" in by_name:
        s = by_name["sweep_f0"]
        plots.plot_f0_trajectory({MODEL_LABELS[k]: (kept[k]["sweep_f0"], 2 ** s.targets["log2_f0"], s.groups)
                                  for k in results}, out / figures["trajectory"])
    else:
        figures.pop("trajectory")
    plots.plot_patch_filters({MODEL_LABELS[k]: kept[k]["_filters"] for k in results}, out / figures["filters"])
    plots.plot_mi(labelled, out / figures["mi"])
    if real_points:
        figures["real"] = "real_f0_transfer.png"
        plots.plot_real_transfer(real_points, out / figures["real"])

    # ---- numbers and report
    info = {
        "checkpoint": str(args.checkpoint),
        "model": {"depth": L, "embed_dim": encoder.embedding_size, "patch_size": encoder.config.patch_size},
        "window_seconds": encoder.window_seconds, "sample_rate": encoder.sample_rate,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "seed": args.seed, "folds": args.folds, "permutations": args.permutations, "rank": args.rank,
        "analysis_layer": layer,
        "probe_sets": {s.name: s.summary() for s in sets}, "skipped_sweeps": skipped,
        "world": world_cfg.to_dict(), "torch": torch.__version__,
    }
    timing["total_s"] = time.time() - t0
    info["runtime_s"] = timing["total_s"]
    info["timing"] = timing
    doc = {"info": info, "models": results, "real_audio": real_note, "figures": figures}
    atomic_write_text(out / "analysis.json", json.dumps(jsonable(doc, skip_keys=("pred",)), indent=1) + "\n")
    write_report(out / "report.md", info, results, real_note, figures)
    _log(f"wrote {out / 'report.md'}, {out / 'analysis.json'} and {len(figures)} figures in {timing['total_s']:.0f} s")
    return 0
