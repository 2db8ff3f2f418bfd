"""Figures of ``audiopg analyze`` (matplotlib, Agg backend, PNG).

Every function takes the numbers of one or more models (``{"trained": ..., "random init": ...}``)
and writes one file; none of them computes statistics beyond a PCA for display.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["plot_decoding", "plot_angles", "plot_pca", "plot_patch_filters", "plot_f0_trajectory", "plot_mi",
           "plot_real_transfer", "PRETTY"]

PRETTY = {
    "log2_f0": "log2 f0",
    "event_level_db": "event level (dB rel.)",
    "snr_db": "SNR (dB)",
    "level_db": "abs. level (dBFS)",
    "fm_index": "FM index",
    "log2_cutoff": "log2 cutoff",
    "event_count": "event count",
    "source": "source type",
    "pulse_shape": "pulse shape",
    "noise_colour": "noise colour",
}
STYLES = ("-", "--", ":", "-.")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)


def _pca(X: np.ndarray, k: int = 3, fit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores of X on the top-k PCs of ``fit`` (default X), and the explained variance ratios."""
    ref = X if fit is None else fit
    mu = ref.mean(0)
    _, s, Vt = np.linalg.svd(ref - mu, full_matrices=False)
    var = s ** 2 / max((s ** 2).sum(), 1e-12)
    return (X - mu) @ Vt[:k].T, var[:k]


def plot_decoding(results: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """R^2 per layer (random set; sweeps) and categorical accuracy per layer with chance.

    One colour per factor, one line style per model (legend: first model's lines)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    titles = ("random set: R$^2$ (all factors vary)", "sweeps: R$^2$ across base clips (grouped CV)",
              "sweeps: within-base R$^2$ (centered per base clip)", "categorical: accuracy (dotted: chance)")
    color_of: dict[str, str] = {}
    L = 1
    for m, (model, res) in enumerate(results.items()):
        style = STYLES[m % len(STYLES)]
        L = res["layers"]
        layers = np.arange(1, L + 1)
        for set_name, entries in res["decoding"].items():
            for target, rec in entries.items():
                if "r2" not in rec and "accuracy" not in rec:
                    continue
                color = color_of.setdefault(target, colors[len(color_of) % len(colors)])
                label = PRETTY.get(target, target) + ("" if set_name == "random" else f" [{set_name}]")
                label = label if m == 0 else None
                if "r2" in rec:
                    ax = axes[0] if set_name == "random" else axes[1]
                    ax.plot(layers, np.maximum(rec["r2"], -1.0), style, color=color, marker="o", ms=3, label=label)
                    if "r2_within" in rec:
                        axes[2].plot(layers, np.maximum(rec["r2_within"], -1.0), style, color=color, marker="o", ms=3,
                                     label=label)
                else:
                    marker = "o" if set_name == "random" else "s"
                    axes[3].plot(layers, rec["accuracy"], style, color=color, marker=marker, ms=3, label=label)
                    if m == 0:
                        axes[3].axhline(rec["chance"], color=color, lw=0.8, ls=":", alpha=0.7)
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer (block output; last = after the final norm)")
        ax.set_xticks(range(1, L + 1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    for ax in axes[:3]:
        ax.set_ylabel("cross-validated R$^2$ (clipped at -1)")
        ax.set_ylim(min(-0.1, max(ax.get_ylim()[0], -1.0)), 1.02)
    axes[3].set_ylabel("cross-validated accuracy")
    axes[3].set_ylim(0, 1.02)
    fig.suptitle("Decodability per layer; line style = model: "
                 + ", ".join(f"'{STYLES[i % len(STYLES)]}' {k}" for i, k in enumerate(results)), fontsize=10)
    _save(fig, path)


def plot_angles(results: Mapping[str, Mapping[str, Any]], layer: int, path: Path) -> None:
    """Decoding-direction angle matrices (controlled sweeps; joint random set) at ``layer``, per model."""
    plt = _plt()
    kinds = ("controlled", "joint")
    fig, axes = plt.subplots(len(kinds), len(results), figsize=(7.0 * len(results), 6.0 * len(kinds)), squeeze=False,
                             constrained_layout=True)
    im = None
    for c, (model, res) in enumerate(results.items()):
        for r, kind in enumerate(kinds):
            ax = axes[r, c]
            mat = res["angles"][kind][layer] if res["angles"][kind] else None
            if not mat:
                ax.axis("off")
                ax.set_title(f"{model}: {kind}: not available", fontsize=9)
                continue
            A = np.array(mat["decode"], dtype=float)
            np.fill_diagonal(A, np.nan)
            names = [PRETTY.get(n, n) for n in mat["factors"]]
            im = ax.imshow(A, vmin=0, vmax=180, cmap="RdBu_r")
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            for i in range(len(names)):
                for j in range(len(names)):
                    if i != j and np.isfinite(A[i, j]):
                        ax.text(j, i, f"{A[i, j]:.0f}", ha="center", va="center", fontsize=7)
            src = "sweeps, within-base centered" if kind == "controlled" else "random set"
            ax.set_title(f"{model}: {kind} ({src})\nlayer {layer + 1}", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="angle between ridge directions (deg); 90 = orthogonal")
    _save(fig, path)


def plot_pca(panels: Mapping[str, Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]], path: Path) -> None:
    """``panels[model]`` = list of (title, scores-source X (N, D), colour values (N,), PCA reference X or None)."""
    plt = _plt()
    ncol = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(len(panels), ncol, figsize=(5.0 * ncol, 4.4 * len(panels)), squeeze=False,
                             constrained_layout=True)
    for r, (model, items) in enumerate(panels.items()):
        for c in range(ncol):
            ax = axes[r, c]
            if c >= len(items):
                ax.axis("off")
                continue
            title, X, colour, ref = items[c]
            Z, var = _pca(X, 2, ref)
            ok = np.isfinite(colour)
            ax.scatter(Z[~ok, 0], Z[~ok, 1], s=5, c="lightgrey", label="n/a")
            sc = ax.scatter(Z[ok, 0], Z[ok, 1], s=7, c=colour[ok], cmap="viridis")
            fig.colorbar(sc, ax=ax, shrink=0.8)
            ax.set_title(f"{model}: {title}", fontsize=9)
            ax.set_xlabel(f"PC1 ({100 * var[0]:.0f}%)")
            ax.set_ylabel(f"PC2 ({100 * var[1]:.0f}%)" if len(var) > 1 else "PC2")
    _save(fig, path)


def plot_patch_filters(weights: Mapping[str, np.ndarray], path: Path, count: int = 64) -> None:
    """First-layer patch filters (conv weights (D, 1, pt, pf) over (time, mel)) as pf x pt images, per model.

    Shown with mel bins upwards and time to the right; each filter scaled to its own max |w|."""
    plt = _plt()
    cols = int(np.ceil(np.sqrt(count)))
    fig, axes = plt.subplots(1, len(weights), figsize=(6.0 * len(weights), 6.2), squeeze=False)
    for ax, (model, w) in zip(axes[0], weights.items()):
        w = np.asarray(w)[:, 0]  # (D, time, mel)
        D, pt, pf = w.shape
        n = min(count, D)
        order = np.argsort(-np.abs(w).reshape(D, -1).sum(1))[:n]  # strongest filters first
        rows = int(np.ceil(n / cols))
        canvas = np.full((rows * (pf + 1) - 1, cols * (pt + 1) - 1), np.nan)
        for i, d in enumerate(order):
            f = w[d].T[::-1]  # mel upwards, time to the right
            f = f / max(np.abs(f).max(), 1e-12)
            r, c = divmod(i, cols)
            canvas[r * (pf + 1):r * (pf + 1) + pf, c * (pt + 1):c * (pt + 1) + pt] = f
        ax.imshow(canvas, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{model}: {n} of {D} patch filters (largest L1 first; x time, y mel)", fontsize=9)
        ax.axis("off")
    _save(fig, path)


def plot_f0_trajectory(trajectories: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    """``trajectories[model]`` = (X (N, D), f0 Hz (N,), base-clip groups (N,)) of the f0 sweep.

    Embeddings are centered within each base clip; PCs of the centered sweep; one line per base clip."""
    plt = _plt()
    fig, axes = plt.subplots(2, len(trajectories), figsize=(5.6 * len(trajectories), 9.0), squeeze=False,
                             constrained_layout=True)
    for c, (model, (X, f0, groups)) in enumerate(trajectories.items()):
        Xc = np.asarray(X, dtype=np.float64).copy()
        for g in np.unique(groups):
            Xc[groups == g] -= Xc[groups == g].mean(0)
        Z, var = _pca(Xc, 3)
        for r, (a, b) in enumerate(((0, 1), (0, 2))):
            ax = axes[r, c]
            for g in np.unique(groups):
                m = groups == g
                order = np.argsort(f0[m])
                ax.plot(Z[m][order, a], Z[m][order, b], "-", color="grey", lw=0.7, alpha=0.6)
            sc = ax.scatter(Z[:, a], Z[:, b], c=np.log2(f0), s=14, cmap="plasma")
            ax.set_xlabel(f"PC{a + 1} ({100 * var[a]:.0f}%)")
            ax.set_ylabel(f"PC{b + 1} ({100 * var[b]:.0f}%)" if b < len(var) else f"PC{b + 1}")
            ax.set_title(f"{model}: f0 sweep, one line per base clip", fontsize=9)
            fig.colorbar(sc, ax=ax, shrink=0.8, label="log2 f0 (Hz)")
    _save(fig, path)


def plot_mi(results: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Factors x units MI heatmaps (units sorted by their most informative factor), per model."""
    plt = _plt()
    fig, axes = plt.subplots(len(results), 1, figsize=(14, 2.8 * len(results) + 1), squeeze=False,
                             constrained_layout=True)
    vmax = max(np.nanmax(np.array(r["mi"]["mi"], dtype=float)) for r in results.values()) or 1.0
    for ax, (model, res) in zip(axes[:, 0], results.items()):
        M = np.nan_to_num(np.array(res["mi"]["mi"], dtype=float))  # (units, factors)
        top = M.argmax(1)
        order = np.lexsort((-M.max(1), top))
        im = ax.imshow(M[order].T, aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        names = [PRETTY.get(n, n) for n in res["mi"]["factors"]]
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("unit (sorted by most informative factor)")
        cw = res["mi"].get("concentration_weighted")
        ax.set_title(f"{model}: MI per unit and factor (nats), layer {res['mi']['layer'] + 1}; "
                     f"MI-weighted concentration {cw:.2f}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.9)
    _save(fig, path)


def plot_real_transfer(points: Mapping[str, tuple[np.ndarray, np.ndarray, str]], path: Path) -> None:
    """``points[model]`` = (true log2 f0, transferred prediction, caption): scatter per model."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(points), figsize=(5.0 * len(points), 4.6), squeeze=False, constrained_layout=True)
    for ax, (model, (y, pred, caption)) in zip(axes[0], points.items()):
        ax.scatter(y, pred, s=8, alpha=0.7)
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("YIN log2 f0 of the real segment")
        ax.set_ylabel("synthetic-trained probe's prediction")
        ax.set_title(f"{model}: {caption}", fontsize=9)
        ax.grid(alpha=0.3)
    _save(fig, path)
