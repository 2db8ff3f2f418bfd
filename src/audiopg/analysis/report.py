"""The whole ``audiopg analyze`` run and its outputs: ``analysis.json``, ``report.md`` and the figures.

Probe sets from the encoder's own world, embeddings at every layer, decoding, directions and MI
(:func:`analyze_layers`), the same for a randomly initialized copy, the real-audio f0 check; see docs/analysis.md.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from audiopg.analysis.decoding import decode_sets, single_threaded, standardize
from audiopg.analysis.directions import (
    layer_angles,
    participation_ratio,
    random_angle_chance,
    random_subspace_chance,
)
from audiopg.analysis.mi import mutual_information
from audiopg.analysis.plots import (
    PRETTY,
    plot_angles,
    plot_decoding,
    plot_f0_trajectory,
    plot_mi,
    plot_patch_filters,
    plot_pca,
    plot_real_transfer,
)
from audiopg.analysis.probesets import (
    ProbeSet,
    make_probe_sets,
    world_config_for_encoder,
)
from audiopg.analysis.real_audio import fsdd_clips, real_pitch_check
from audiopg.audio.preview import clip_cards
from audiopg.core.config import check_range
from audiopg.core.errors import ConfigError
from audiopg.core.io import atomic_write_json, atomic_write_text
from audiopg.core.page import Page, markdown_images
from audiopg.eval.report import jsonable
from audiopg.model.encoder import Encoder

__all__ = ["AnalysisSettings", "analyze_layers", "embed_sets", "run_analysis", "markdown_report"]

MODEL_LABELS = {"trained": "trained", "random_init": "random init"}
INTENSITY = ("event_level_db", "snr_db", "level_db")  # the factors the f0 direction is held against
MINIMA = {"seed": 0, "clips": 16, "bases": 2, "points": 3, "f0_points": 3, "folds": 2, "permutations": 0, "rank": 1,
          "mi_units": 1, "batch_size": 1, "real_clips": 10}


@dataclass
class AnalysisSettings:
    """What one analysis run does; the names are ``audiopg analyze``'s flags."""

    checkpoint: Path  # run folder, model folder or encoder.safetensors
    out: Path  # output folder
    clips: int = 512  # clips in the random probe set
    bases: int = 8  # base clips per sweep (the f0 sweep rounds up to a multiple of the tonal sources)
    points: int = 8  # values per sweep
    f0_points: int = 12  # values of the f0 sweep
    seed: int = 0  # probe sets, splits, baseline initialization
    device: str = "cpu"
    no_baseline: bool = False  # skip the randomly initialized copy
    layer: int = -1  # layer of the angle figures, MI and PCA
    folds: int = 5  # outer cross-validation folds
    permutations: int = 20  # shuffled-target probes per factor
    rank: int = 3  # rank k of the probe subspaces
    mi_units: int = 256  # units in the MI heatmap (a random subset beyond)
    batch_size: int = 32  # windows per forward pass
    fsdd: Path | None = None  # FSDD folder (None: looked for, see real_audio.find_fsdd)
    real_clips: int = 300  # real voiced segments to use at most
    no_real: bool = False  # skip the real-audio check
    html: bool = False  # also write index.html: the report with its figures and a few probe clips (docs/pages.md)

    def __post_init__(self):
        for key, low in MINIMA.items():
            check_range(key.replace("_", "-"), getattr(self, key), low)


# ----------------------------------------------------------------------------- one encoder's embeddings
@single_threaded
def analyze_layers(
    embeddings: Mapping[str, np.ndarray],
    sets: Sequence[Any],
    *,
    analysis_layer: int = -1,
    folds: int = 5,
    permutations: int = 20,
    k: int = 3,
    mi_units: int = 256,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Decoding at every layer, directions and angles at every layer, chance levels, MI at ``analysis_layer``.

    ``embeddings[set.name]``: (N, L, D) for every probe set in ``sets`` (objects with ``name``, ``targets``,
    ``groups``, ``varied``, ``kind(target)`` and ``valid(target)``, e.g. :class:`ProbeSet`); one of them must be
    named ``random`` (the reference for standardization, the joint probes and MI).
    """
    log = log or (lambda *_: None)
    by_name = {s.name: s for s in sets}
    if "random" not in by_name:
        raise ValueError("a probe set named 'random' is needed")
    ref = np.asarray(embeddings["random"], dtype=np.float64)
    N, L, D = ref.shape
    layer = analysis_layer % L
    out: dict[str, Any] = {"layers": L, "dim": D, "analysis_layer": layer}
    stats = [standardize(ref[:, l])[1:] for l in range(L)]
    out["participation_ratio"] = [participation_ratio(standardize(ref[:, l])[0]) for l in range(L)]
    out["decoding"] = decode_sets(embeddings, sets, layer=layer, folds=folds, seed=seed, log=log)
    out["angles"] = layer_angles(embeddings, sets, stats, k=k, permutations=permutations, seed=seed)
    out["chance"] = {"random_direction": random_angle_chance(D, samples=2000, seed=seed),
                     "random_subspace": random_subspace_chance(D, k, seed=seed)}
    log(f"  angles done ({L} layers)")
    rs = by_name["random"]
    out["mi"] = mutual_information(ref[:, layer], {t: (rs.targets[t], rs.kind(t)) for t in rs.targets},
                                   max_units=mi_units, seed=seed)
    out["mi"]["layer"] = layer
    log("  mutual information done")
    return out


def embed_sets(encoder: Encoder, sets: Sequence[ProbeSet], batch_size: int, chunk: int = 128) -> dict[str, np.ndarray]:
    """(N, depth, D) float32 embeddings of every probe set, every layer (mean-pooled patch tokens)."""
    out = {}
    for s in sets:
        parts = []
        for i in range(0, len(s), chunk):
            emb = encoder.embed(s.audio[i:i + chunk], s.sample_rate, layer="all", pool="mean",
                                batch_size=batch_size, normalize=s.normalize)
            parts.append(emb.scene.float().cpu().numpy())
        out[s.name] = np.concatenate(parts)
    return out


# ----------------------------------------------------------------------------- the run
def run_analysis(settings: AnalysisSettings, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Analyse the encoder at ``settings.checkpoint`` (and a randomly initialized copy) and write
    ``analysis.json``, ``report.md`` and the figures into ``settings.out`` (with ``settings.html`` also
    ``index.html``); returns the JSON document."""
    t0 = time.time()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = Encoder.from_pretrained(settings.checkpoint, device=settings.device)
    L = encoder.depth
    if not -L <= settings.layer < L:
        raise ConfigError("layer", f"must be in [-{L}, {L}), got {settings.layer}")
    layer = settings.layer % L
    world_cfg = world_config_for_encoder(encoder.metadata.get("world"), encoder.window_seconds)
    if settings.no_real:
        clips, real_note = None, {"skipped": "--no-real"}
    else:
        clips, real_note = fsdd_clips(settings.fsdd, encoder.sample_rate, settings.real_clips, settings.seed)
    log("real audio: " + (real_note.get("skipped") or f"{real_note['segments']} segments"))
    log(f"{settings.checkpoint}: {L} layers x {encoder.embedding_size}, window {encoder.window_seconds:g} s; "
        "building probe sets")
    sets, skipped = make_probe_sets(world_cfg, clips=settings.clips, bases=settings.bases, points=settings.points,
                                    f0_points=settings.f0_points, seed=settings.seed, device="cpu")
    log("probe sets: " + ", ".join(f"{s.name} ({len(s)})" for s in sets))

    encoders: dict[str, Encoder] = {"trained": encoder}
    if not settings.no_baseline:
        encoders["random_init"] = Encoder.from_pretrained(settings.checkpoint, device=settings.device, reinit=True,
                                                          seed=settings.seed)
    results: dict[str, dict] = {}
    at_layer: dict[str, dict[str, np.ndarray]] = {}  # model -> probe set -> (N, D) at the analysis layer
    real_points = {}
    timing: dict[str, float] = {}
    for key, enc in encoders.items():
        t = time.time()
        emb = embed_sets(enc, sets, settings.batch_size)
        timing[f"{key}_embed_s"] = time.time() - t
        log(f"{MODEL_LABELS[key]}: embedded {sum(len(s) for s in sets)} clips in {timing[f'{key}_embed_s']:.0f} s; "
            "analysing")
        t = time.time()
        res = analyze_layers(emb, sets, analysis_layer=layer, folds=settings.folds, permutations=settings.permutations,
                             k=settings.rank, mi_units=settings.mi_units, seed=settings.seed, log=log)
        if clips:
            rr = real_pitch_check(enc, emb, sets, clips, layer=layer, batch_size=settings.batch_size,
                                  folds=settings.folds, seed=settings.seed)
            y, pred = rr.pop("plot")
            rec = rr["per_layer"][layer]
            real_points[MODEL_LABELS[key]] = (y, pred, f"layer {layer + 1}: R² {rec['transfer_r2']:.2f}, "
                                                       f"r {rec['transfer_corr']:.2f}")
            res["real_audio"] = rr
        timing[f"{key}_analysis_s"] = time.time() - t
        results[key] = res
        at_layer[key] = {name: e[:, layer] for name, e in emb.items()}
    log("figures")
    filters = {MODEL_LABELS[k]: enc.model.patch_embed.proj.weight.detach().float().cpu().numpy()
               for k, enc in encoders.items()}
    figures = write_figures(out, layer, sets, results, at_layer, filters, real_points)

    info = {
        "checkpoint": str(settings.checkpoint),
        "model": {"depth": L, "embed_dim": encoder.embedding_size, "patch_size": encoder.config.patch_size,
                  "patch_frames": encoder.config.patch_t},
        "window_seconds": encoder.window_seconds, "sample_rate": encoder.sample_rate,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()
                     if k != "out"},  # where it was written is not a setting (the CLI writes a temp folder first)
        "seed": settings.seed, "folds": settings.folds, "permutations": settings.permutations, "rank": settings.rank,
        "analysis_layer": layer,
        "probe_sets": {s.name: s.summary() for s in sets}, "skipped_sweeps": skipped,
        "world": world_cfg.to_dict(), "torch": torch.__version__,
    }
    timing["total_s"] = time.time() - t0
    info["runtime_s"] = timing["total_s"]
    info["timing"] = timing
    doc = {"info": info, "models": results, "real_audio": real_note, "figures": figures}
    atomic_write_json(out / "analysis.json", jsonable(doc, skip_keys=("pred",)), indent=1)
    atomic_write_text(out / "report.md", markdown_report(info, results, real_note, figures))
    if settings.html:
        write_report_page(out, probe_clip_cards(sets[0]))
    log(f"wrote {out / 'report.md'}, {out / 'analysis.json'} and {len(figures)} figures in {timing['total_s']:.0f} s")
    return doc


def write_figures(out: Path, layer: int, sets: Sequence[ProbeSet], results: Mapping[str, Mapping[str, Any]],
                  at_layer: Mapping[str, Mapping[str, np.ndarray]], filters: Mapping[str, np.ndarray],
                  real_points: Mapping[str, tuple[np.ndarray, np.ndarray, str]]) -> dict[str, str]:
    """The PNGs of one run in ``out``; returns {figure: file name} (the f0 trajectory only with an f0 sweep,
    the real-audio scatter only with real points)."""
    by_name = {s.name: s for s in sets}
    labelled = {MODEL_LABELS[k]: v for k, v in results.items()}
    figures = {"decoding": "decoding_per_layer.png", "angles": "angles.png", "pca": "pca.png",
               "trajectory": "f0_trajectory.png", "filters": "patch_filters.png", "mi": "mi_heatmap.png"}
    plot_decoding(labelled, out / figures["decoding"])
    plot_angles(labelled, layer, out / figures["angles"])
    rs = by_name["random"]
    pca_panels = {}
    for key in results:
        kept = at_layer[key]
        items = [("random set; colour: log2 f0", kept["random"], rs.targets["log2_f0"], None),
                 ("random set; colour: SNR (dB)", kept["random"], rs.targets["snr_db"], None)]
        if "sweep_event_level" in by_name:
            s = by_name["sweep_event_level"]
            items.append(("event-level sweep (random set's PCs)\ncolour: quieter event (dB)",
                          kept["sweep_event_level"], s.targets["event_level_db"], kept["random"]))
        if "sweep_level" in by_name:
            s = by_name["sweep_level"]
            items.append(("abs.-level sweep (random set's PCs)\ncolour: level (dBFS)",
                          kept["sweep_level"], s.targets["level_db"], kept["random"]))
        pca_panels[MODEL_LABELS[key]] = items
    plot_pca(pca_panels, out / figures["pca"])
    if "sweep_f0" in by_name:
        s = by_name["sweep_f0"]
        plot_f0_trajectory({MODEL_LABELS[k]: (at_layer[k]["sweep_f0"], 2 ** s.targets["log2_f0"], s.groups)
                            for k in results}, out / figures["trajectory"])
    else:
        figures.pop("trajectory")
    plot_patch_filters(filters, out / figures["filters"])
    plot_mi(labelled, out / figures["mi"])
    if real_points:
        figures["real"] = "real_f0_transfer.png"
        plot_real_transfer(real_points, out / figures["real"])
    return figures


# ----------------------------------------------------------------------------- index.html
PAGE_CLIPS = 4  # probe clips shown on the page


def probe_clip_cards(probe_set: ProbeSet, n: int = PAGE_CLIPS) -> list[dict[str, Any]]:
    """Player, log-mel spectrogram and decoding targets of the first ``n`` clips of a probe set."""
    n = min(n, len(probe_set))
    factors = []
    for i in range(n):
        rec: dict[str, Any] = {}
        for name, y in probe_set.targets.items():
            if not probe_set.valid(name)[i]:
                continue
            classes = probe_set.classes.get(name, ())
            rec[name] = (classes[int(y[i])] if int(y[i]) < len(classes) else int(y[i])) \
                if probe_set.kind(name) == "categorical" else float(y[i])
        factors.append(rec)
    return clip_cards(probe_set.audio[:n], probe_set.sample_rate,
                      [f"{probe_set.name} set, clip {i}" for i in range(n)], factors)


def write_report_page(out: Path, clips: Sequence[dict[str, Any]] = ()) -> Path:
    """``out/index.html``: ``out/report.md`` with its figures (files in ``out``) and the probe ``clips``."""
    text = (out / "report.md").read_text()
    page = Page.from_markdown(text, markdown_images(text, out))
    if clips:
        page.heading("Probe clips")
        page.text("The first clips of the probe set, as the encoder heard them, with the targets decoded above.")
        page.clips(clips)
    return page.write(out / "index.html")


# ----------------------------------------------------------------------------- report.md
def _num(x: Any, nd: int = 3) -> str:
    """``x`` with ``nd`` decimals; a dash for a missing or non-finite number."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}"


def _best(values: list[float]) -> tuple[int, float]:
    arr = np.array([v if v is not None else -np.inf for v in values], dtype=float)
    i = int(np.argmax(arr))
    return i, float(arr[i])


def markdown_report(info: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]], real: Mapping[str, Any],
                    figures: Mapping[str, str]) -> str:
    """``report.md``: probe sets, decodability, orthogonality, MI, figures and the real-audio check, every model
    side by side (``results[model]`` from :func:`analyze_layers`, ``real``: the FSDD note)."""
    models = list(results)
    labels = [MODEL_LABELS.get(m, m) for m in models]
    first = results[models[0]]
    L, layer = first["layers"], first["analysis_layer"]
    lines: list[str] = []
    w = lines.append
    w(f"# Encoder analysis: `{info['checkpoint']}`\n")
    w(f"Model: {info['model']['depth']} layers, width {info['model']['embed_dim']}, "
      f"window {info['window_seconds']:g} s at {info['sample_rate']} Hz.  Models: "
      + ", ".join(f"**{x}**" for x in labels)
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
      f"({info['folds']} outer folds; sweeps grouped by base clip so no base clip is on both sides; "
      "penalty by inner CV). "
      "*shuffled* = the same probe on shuffled targets at the analysis layer (chance, ≈ 0 for R²).\n")
    w(f"![decodability per layer]({figures['decoding']})\n")
    w(f"Sweeps: *R²* = across base clips (the probe must give the factor's value on an unseen base clip); "
      "*within* = after centering embeddings and targets on each base clip's mean (does the factor move every base "
      f"clip the same way?).  *shuffled*: {labels[0]}'s probe on shuffled targets at layer {layer + 1}.\n")
    w("| factor | probe set | "
      + " | ".join(f"{lab}: best (layer) | {lab}: layer {layer + 1} | {lab}: within, layer {layer + 1}"
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
                cells += [f"{_num(b)} ({i + 1})", _num(r["r2"][layer]),
                          _num(r["r2_within"][layer]) if "r2_within" in r else "–"]
            w(f"| {PRETTY.get(target, target)} | {set_name} | " + " | ".join(cells)
              + f" | {_num(rec.get('r2_shuffled'))} |")
    w("")
    w("| categorical factor | probe set | classes | chance | "
      + " | ".join(f"{lab}: best (layer) | {lab}: layer {layer + 1}" for lab in labels) + " | shuffled |")
    w("|---|---|---:|---:|" + "---:|---:|" * len(labels) + "---:|")
    for set_name, entries in first["decoding"].items():
        for target, rec in entries.items():
            if "accuracy" not in rec:
                continue
            cells = []
            for m in models:
                r = results[m]["decoding"][set_name][target]
                i, b = _best(r["accuracy"])
                cells += [f"{_num(b)} ({i + 1})", _num(r["accuracy"][layer])]
            w(f"| {PRETTY.get(target, target)} | {set_name} | {rec['classes']} | {_num(rec['chance'])} | "
              + " | ".join(cells) + f" | {_num(rec.get('accuracy_shuffled'))} |")
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
      f"fit on shuffled targets ({info['permutations']} per factor, all pairs), per pair below; its spread is wider "
      "than the random-direction one because ridge probes lean towards the high-variance units.  Effective dimension "
      "(participation ratio) of the random set's embedding at this layer: "
      + ", ".join(f"{lab} {results[m]['participation_ratio'][layer]:.1f}" for m, lab in zip(models, labels)) + ".\n")
    w(f"![angle matrices]({figures['angles']})\n")
    w("**f0 against intensity** (controlled directions; null = shuffled-target probes, mean [95 %]; split-half = "
      "angle between each factor's directions fit on two halves of its base clips, the sampling-noise floor below "
      "which no angle can be told from 0°; joint = the same pair's decoding angle from the random set):\n")
    w("| pair | model | decoding angle | null | z | split-half f0 / other | encoding angle | null | "
      f"principal angles (k={info['rank']}) | null smallest | joint |")
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
            w(f"| f0 vs {PRETTY.get(other, other)} | {lab} | {_num(rec['decode'], 1)}° | {_num(nd.get('mean'), 1)} "
              f"[{_num(nd.get('q2.5'), 1)}, {_num(nd.get('q97.5'), 1)}] | {_num(rec.get('decode_z'), 2)} | "
              f"{_num(sh.get('log2_f0', {}).get('decode'), 0)}° / {_num(sh.get(other, {}).get('decode'), 0)}° | "
              f"{_num(rec['encode'], 1)}° | "
              f"{_num(ne.get('mean'), 1)} [{_num(ne.get('q2.5'), 1)}, {_num(ne.get('q97.5'), 1)}] | "
              + ", ".join(f"{a:.1f}°" for a in rec["principal"]) + f" | {_num(npa.get('mean'), 1)} "
              f"[{_num(npa.get('q2.5'), 1)}, {_num(npa.get('q97.5'), 1)}] | "
              + (f"{_num(jrec.get('decode'), 1)}°" if jrec else "–") + " |")
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
                    cells.append(_num(ang["pairs"][f"log2_f0|{o}"]["decode"], 1) if ang else "–")
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
            cells += [f"{_num(pf['top'])} ({unit})", _num(pf["gap_relative"], 2)]
        w(f"| {PRETTY.get(f, f)} | " + " | ".join(cells) + " |")
    w("\nMI-weighted mean concentration: " + ", ".join(
        f"{lab} {_num(results[m]['mi']['concentration_weighted'], 3)}" for m, lab in zip(models, labels)) + ".\n")

    # ---- figures
    w("## 4. Figures\n")
    w(f"- PCA of embeddings (layer {layer + 1}), coloured by f0 and by intensity: ![pca]({figures['pca']})")
    w("- f0 sweep trajectories in the top principal components (centered within base clip): "
      f"![f0 trajectory]({figures['trajectory']})")
    pf = info["model"].get("patch_size", "?")
    pt = info["model"].get("patch_frames", pf)  # reports written before oblong patches have patch_size only
    w(f"- First layer's patch filters (patch-embedding conv weights, {pt} frames × {pf} mel bins, x = time, "
      "y = mel): "
      f"![filters]({figures['filters']})")
    w("")

    # ---- real audio
    w("## 5. Real audio: f0 of spoken digits (FSDD)\n")
    if real.get("skipped"):
        w(f"Skipped: {real['skipped']}.\n")
    else:
        sec = real.get("segment_seconds", {})
        w(f"{real['segments']} stable voiced segments from {real['files']} of {real['wav_files']} recordings in "
          f"`{real['root']}` ({real['selection']}; durations {_num(sec.get('min'), 2)}–{_num(sec.get('max'), 2)} s, "
          f"median {_num(sec.get('median'), 2)} s: spoken digits rarely hold one pitch for 0.5 s).  The data is only "
          "read, never copied.  The *transferred* probe is a ridge fit on the "
          "world's tonal clips (random set and f0 sweep) in their standardized space and applied unchanged; "
          "R² needs offset and scale to transfer, correlation does not.  *Real CV*: ridge fit on the real segments, "
          "cross-validated by recording and leave-speakers-out.\n")
        if figures.get("real"):
            w(f"![real transfer]({figures['real']})\n")
        w("| model | f0 range (Hz) | layer | transferred R² | transferred r | slope | real CV R² (by recording) "
          "| real CV R² (by speaker) |")
        w("|---|---|---:|---:|---:|---:|---:|---:|")
        for m, lab in zip(models, labels):
            rr = results[m].get("real_audio")
            if not rr:
                continue
            rng_txt = f"{rr['f0_hz']['min']:.0f}–{rr['f0_hz']['max']:.0f}"
            for l, rec in enumerate(rr["per_layer"]):
                w(f"| {lab} | {rng_txt} | {l + 1} | {_num(rec['transfer_r2'])} | {_num(rec['transfer_corr'])} | "
                  f"{_num(rec['transfer_slope'], 2)} | {_num(rec.get('real_cv_r2_recording'))} | "
                  f"{_num(rec.get('real_cv_r2_speaker'))} |")
        w("")
    w("## Files\n")
    w("- `analysis.json`: every number above (and per-layer angle matrices, nulls, MI matrices).")
    for key, name in figures.items():
        w(f"- `{name}`")
    return "\n".join(lines) + "\n"


