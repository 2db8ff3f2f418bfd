"""Mutual information between embedding units and factors (Kraskov k-NN), and how it concentrates.

Per unit, how its MI spreads over the factors (concentration); per factor, the gap between its most informative
unit and the runner-up (MIG-style).  See docs/analysis.md.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from audiopg.analysis.decoding import EPS, single_threaded

__all__ = ["mutual_information", "mi_summary"]


@single_threaded
def mutual_information(X: np.ndarray, targets: Mapping[str, tuple[np.ndarray, str]], max_units: int = 256,
                       seed: int = 0, n_neighbors: int = 3) -> dict[str, Any]:
    """Units x factors MI (nats).  ``targets``: name -> (y, "continuous"|"categorical"), NaN / -1 = n/a."""
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    X = np.asarray(X, dtype=np.float64)
    D = X.shape[1]
    rng = np.random.default_rng(seed)
    units = np.arange(D) if D <= max_units else np.sort(rng.choice(D, max_units, replace=False))
    names = list(targets)
    M = np.zeros((len(units), len(names)))
    for j, name in enumerate(names):
        y, kind = targets[name]
        y = np.asarray(y)
        m = (y >= 0) if kind == "categorical" else np.isfinite(y)
        if m.sum() < n_neighbors + 2:
            M[:, j] = np.nan
            continue
        Xm = X[m][:, units]
        if kind == "categorical":
            M[:, j] = mutual_info_classif(Xm, y[m].astype(int), discrete_features=False, n_neighbors=n_neighbors,
                                          random_state=seed)
        else:
            M[:, j] = mutual_info_regression(Xm, y[m].astype(np.float64), discrete_features=False,
                                             n_neighbors=n_neighbors, random_state=seed)
    return {"units": units.tolist(), "factors": names, "mi": M.tolist(), **mi_summary(M, names)}


def mi_summary(M: np.ndarray, names: Sequence[str], floor: float = 0.02,
               relative_floor: float = 0.05) -> dict[str, Any]:
    """Concentration of each unit's MI over factors and the per-factor top-unit gap (see docs/analysis.md).

    Units whose total MI is below ``max(floor, relative_floor * the largest unit total)`` nats get no
    concentration (None): the k-NN estimate of an independent pair scatters by ~0.01-0.03 nats, and the
    share of such noise over factors means nothing."""
    M = np.nan_to_num(np.asarray(M, dtype=np.float64), nan=0.0).clip(min=0.0)
    F = M.shape[1]
    total = M.sum(1)
    conc = np.full(len(M), np.nan)
    ok = total > max(floor, relative_floor * (float(total.max()) if len(total) else 0.0))
    if F > 1 and ok.any():
        p = M[ok] / total[ok, None]
        H = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(1)
        conc[ok] = 1.0 - H / math.log(F)
    per_factor = {}
    for j, name in enumerate(names):
        col = M[:, j]
        order = np.argsort(col)[::-1]
        top = float(col[order[0]]) if len(col) else 0.0
        second = float(col[order[1]]) if len(col) > 1 else 0.0
        per_factor[name] = {"top_unit_index": int(order[0]) if len(col) else -1, "top": top, "second": second,
                            "gap": top - second, "gap_relative": (top - second) / top if top > EPS else 0.0}
    weighted = float(np.nansum(conc * total) / max(total[ok].sum(), EPS)) if ok.any() and F > 1 else float("nan")
    return {
        "concentration": [None if not np.isfinite(c) else float(c) for c in conc],
        "concentration_mean": float(np.nanmean(conc)) if np.isfinite(conc).any() else float("nan"),
        "concentration_weighted": weighted,
        "concentration_chance_uniform": 0.0,
        "per_factor": per_factor,
    }
