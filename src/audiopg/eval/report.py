"""Reports of probe and fine-tuning runs: ``results.json``, ``results.md`` and confusion-matrix PNGs.

``results.json`` holds everything (dataset summary with the protocol actually
used and why, skipped files with reasons, options, per model the per-split
scores with the chosen regularization, mean and std).  ``results.md`` is the
human-readable table: one row per model, one column per split, then
``mean ± std`` (std over splits, population ddof=0).  Single-label tasks also
get ``confusion_<model>.png`` (test predictions of every split summed).
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from audiopg.core.io import atomic_write_bytes, atomic_write_text

__all__ = ["write_report", "markdown_report", "plot_confusion", "format_score"]

METRIC_NAMES = {"accuracy": "accuracy (%)", "mAP": "macro mAP", "r2": "R²", "median_abs_error": "median absolute error"}


def format_score(metric: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if metric == "accuracy":
        return f"{100 * value:.1f}"
    if metric == "mAP":
        return f"{value:.3f}"
    return f"{value:.3g}" if metric == "median_abs_error" else f"{value:.3f}"


def _table(models: Mapping[str, Mapping], metric: str, key: str = "score") -> list[str]:
    names = list(models)
    splits: list[str] = []
    for m in names:
        for f in models[m]["folds"]:
            if f["split"] not in splits:
                splits.append(f["split"])
    show_splits = len(splits) > 1
    header = ["model"] + (splits if show_splits else [])
    header.append("mean ± std" if show_splits else METRIC_NAMES.get(metric, metric))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in names:
        res = models[m]
        by_split = {f["split"]: f.get(key) for f in res["folds"]}
        row = [m]
        if show_splits:
            row += [format_score(metric, by_split.get(s)) for s in splits]
        mean = res.get("mean") if key == "score" else res.get(f"{key}_mean")
        std = res.get("std") if key == "score" else res.get(f"{key}_std")
        if show_splits:
            row.append(f"{format_score(metric, mean)} ± {format_score(metric, std)}")
        else:
            row.append(format_score(metric, mean))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown_report(results: Mapping[str, Any]) -> str:
    """The Markdown text of ``results.md``."""
    ds = results.get("dataset", {})
    metric = ds.get("metric", "accuracy")
    title = results.get("title") or f"{results.get('command', 'probe')}: {ds.get('name', '?')}"
    lines = [f"# {title}", ""]
    lines.append(f"- data: `{ds.get('root')}` ({ds.get('num_items')} clips"
                 + (f", {ds.get('num_classes')} classes" if ds.get("num_classes") else "") + ")")
    proto = ds.get("protocol", {})
    lines.append(f"- protocol: {proto.get('description', '?')}"
                 + ("" if proto.get("official", True) else " **(not the official protocol)**"))
    lines.append(f"- metric: {METRIC_NAMES.get(metric, metric)}")
    for note in ds.get("notes", []):
        lines.append(f"- **note:** {note}")
    if results.get("selection"):
        lines.append(f"- model selection: {results['selection']}")
    lines.append("")
    models = results.get("models", {})
    if models:
        scale = " (accuracy in %)" if metric == "accuracy" else ""
        lines += [f"## Results{scale}", ""]
        lines += _table(models, metric)
        lines.append("")
        if metric == "r2":
            lines += ["### Median absolute error", ""]
            lines += _table(models, "median_abs_error", key="median_abs_error")
            lines.append("")
        lines += ["## Models", ""]
        for m, res in models.items():
            params = sorted({f.get("param") for f in res["folds"] if f.get("param") is not None})
            param_text = ""
            if params:
                pname = "alpha" if metric == "r2" else "C"
                param_text = f"; chosen {pname}: " + ", ".join(f"{p:g}" for p in params)
            lines.append(f"- **{m}**: {res.get('description', '')}{param_text}")
            for note in res.get("notes", []):
                lines.append(f"  - {note}")
            if res.get("confusion_png"):
                lines.append(f"  - confusion matrix: [{res['confusion_png']}]({res['confusion_png']})")
        lines.append("")
    skipped = ds.get("skipped", [])
    lines += ["## Skipped files", ""]
    if skipped:
        lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped]
    else:
        lines.append("None.")
    lines.append("")
    if results.get("runtime_s") is not None:
        lines.append(f"Run time: {results['runtime_s']:.1f} s.")
        lines.append("")
    return "\n".join(lines)


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str) -> Path:
    """Write a confusion-matrix PNG (rows: true class, columns: predicted; colour = row-normalized)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    n = cm.shape[0]
    size = min(24.0, max(4.0, 0.32 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    fs = 8 if n <= 20 else 5
    ax.set_xticklabels(classes, rotation=90, fontsize=fs)
    ax.set_yticklabels(classes, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title} (accuracy {100 * acc:.1f} %)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def jsonable(obj: Any, skip_keys: tuple[str, ...] = ()) -> Any:
    """Plain JSON values: numpy scalars and arrays as numbers and lists, NaN and inf as null,
    paths as strings; mapping entries named in ``skip_keys`` are left out."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, skip_keys) for k, v in obj.items() if k not in skip_keys}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, skip_keys) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), skip_keys)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(out_dir: str | os.PathLike, results: dict, confusions: Mapping[str, np.ndarray] | None = None) -> dict:
    """Write ``results.json``, ``results.md`` and ``confusion_<model>.png`` into ``out_dir``; returns the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = results.get("dataset", {}).get("classes", [])
    for name, cm in (confusions or {}).items():
        if cm is None:
            continue
        png = f"confusion_{name}.png"
        plot_confusion(cm, classes, out / png, f"{results.get('dataset', {}).get('name', '')} - {name}")
        results["models"][name]["confusion_png"] = png
        results["models"][name]["confusion"] = np.asarray(cm).tolist()
    atomic_write_text(out / "results.json", json.dumps(jsonable(results), indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown_report(results))
    return results
