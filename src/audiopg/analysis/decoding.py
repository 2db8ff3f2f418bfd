"""Per-layer decodability of factors: ridge R^2 and logistic accuracy with nested group cross-validation.

Plain arrays: embeddings ``X`` (clips, units) of one layer, targets ``y`` (clips,) and groups (clips,), clips of
one group never on both sides of a split.  The method (folds, penalties, within-base R^2, shuffled baselines) is
described in docs/analysis.md.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "group_folds", "standardize", "RidgePath", "select_alpha", "ridge_cv", "logistic_cv", "center_within_groups",
    "permute_within_groups", "decode_sets", "transfer_probe", "single_thread", "single_threaded",
]

ALPHA_GRID = np.logspace(-4, 4, 17)  # times n_train (z-scored units)
C_GRID = (0.01, 0.1, 1.0)
EPS = 1e-12


def single_thread():
    """Context: BLAS on one thread.  Small SVDs and solves are far faster so on a shared CPU
    (multi-threaded OpenBLAS was 100x slower on 2 busy cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def single_threaded(fn):
    """Decorator: run ``fn`` with BLAS on one thread (see :func:`single_thread`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------- splits and scaling
def group_folds(groups: np.ndarray, n_splits: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: groups shuffled (seeded) and dealt round-robin into ``n_splits`` folds."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    k = min(int(n_splits), len(uniq))
    if k < 2:
        raise ValueError(f"need at least 2 groups to split, got {len(uniq)}")
    order = np.random.default_rng(seed).permutation(uniq)
    fold_of = {g: i % k for i, g in enumerate(order)}
    f = np.array([fold_of[g] for g in groups])
    return [(np.nonzero(f != i)[0], np.nonzero(f == i)[0]) for i in range(k)]


def standardize(X: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None):
    """(X - mean) / std per unit (stats from X when not given; std floored at 1 % of the median unit's);
    returns (Xs, mean, std)."""
    X = np.asarray(X, dtype=np.float64)
    if mean is None:
        mean = X.mean(0)
    if std is None:
        std = X.std(0)
    # near-constant units: floor their std at 1 % of the median unit's, so a unit that barely moves in the
    # fitting data cannot blow up to huge z-scores on new data
    floor = max(1e-2 * float(np.median(std)), EPS) if np.size(std) else EPS
    std = np.maximum(std, floor)
    return (X - mean) / std, mean, std


# ----------------------------------------------------------------------------- ridge
class RidgePath:
    """Ridge solutions of centered ``X`` (n, D) for many penalties and targets from one SVD."""

    def __init__(self, X: np.ndarray):
        self.U, self.s, self.Vt = np.linalg.svd(X, full_matrices=False)

    def coef(self, Y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """(A, D, T) coefficients for centered targets Y (n, T)."""
        UtY = self.U.T @ Y  # (r, T)
        shrink = self.s[None, :] / (self.s[None, :] ** 2 + np.asarray(alphas)[:, None])  # (A, r)
        return np.einsum("rd,ar,rt->adt", self.Vt, shrink, UtY)


def _fold_scale(X: np.ndarray, train: np.ndarray, test: np.ndarray):
    Xtr, mu, sd = standardize(X[train])
    Xte = (X[test] - mu) / sd
    return Xtr, Xte


@single_threaded
def select_alpha(X: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int = 3, seed: int = 0,
                 grid: np.ndarray = ALPHA_GRID) -> float:
    """Relative ridge penalty (times the number of training clips, for z-scored units) from ``grid``
    with the least group-CV squared error; ``X`` is z-scored inside every fold."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    try:
        folds = group_folds(groups, n_splits, seed)
    except ValueError:
        return float(grid[len(grid) // 2])
    sse = np.zeros(len(grid))
    for tr, te in folds:
        Xtr, Xte = _fold_scale(X, tr, te)
        ym = y[tr].mean()
        coef = RidgePath(Xtr).coef((y[tr] - ym)[:, None], grid * len(tr))[:, :, 0]  # (A, D)
        pred = Xte @ coef.T + ym  # (n_te, A)
        sse += ((pred - y[te, None]) ** 2).sum(0)
    return float(grid[int(np.argmin(sse))])


@single_threaded
def ridge_cv(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, n_splits: int = 5,
             inner_splits: int = 3, seed: int = 0) -> dict[str, Any]:
    """Nested group-CV ridge: pooled out-of-fold R^2, per-fold penalties, predictions."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    pred = np.full(len(y), np.nan)
    alphas = []
    for i, (tr, te) in enumerate(group_folds(groups, n_splits, seed)):
        alpha = select_alpha(X[tr], y[tr], groups[tr], inner_splits, seed + 1 + i)
        alphas.append(alpha)
        Xtr, Xte = _fold_scale(X, tr, te)
        ym = y[tr].mean()
        coef = RidgePath(Xtr).coef((y[tr] - ym)[:, None], np.array([alpha * len(tr)]))[0, :, 0]
        pred[te] = Xte @ coef + ym
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((pred - y) ** 2).sum()) / max(ss_tot, EPS)
    corr = float(np.corrcoef(pred, y)[0, 1]) if np.std(pred) > EPS and np.std(y) > EPS else 0.0
    return {"r2": r2, "corr": corr, "alpha_rel": [float(a) for a in alphas], "pred": pred}


# ----------------------------------------------------------------------------- logistic
def _logistic(C: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=300, tol=1e-3)


@single_threaded
def logistic_cv(X: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, n_splits: int = 5,
                inner_splits: int = 2, seed: int = 0, Cs: Sequence[float] = C_GRID) -> dict[str, Any]:
    """Nested group-CV multinomial logistic regression: out-of-fold accuracy and the majority-class chance."""
    from sklearn.exceptions import ConvergenceWarning

    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    classes, counts = np.unique(labels, return_counts=True)
    pred = np.full(len(labels), -1)
    chosen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, (tr, te) in enumerate(group_folds(groups, n_splits, seed)):
            if len(np.unique(labels[tr])) < 2:
                pred[te] = labels[tr][0]
                continue
            best_c, best_acc = Cs[len(Cs) // 2], -1.0
            try:
                inner = group_folds(groups[tr], inner_splits, seed + 1 + i)
            except ValueError:
                inner = []
            if inner and len(Cs) > 1:
                for C in Cs:
                    correct = 0
                    for itr, ite in inner:
                        a, b = tr[itr], tr[ite]
                        if len(np.unique(labels[a])) < 2:
                            correct += int((labels[b] == labels[a][0]).sum())
                            continue
                        Xa, Xb = _fold_scale(X, a, b)
                        correct += int((_logistic(C).fit(Xa, labels[a]).predict(Xb) == labels[b]).sum())
                    if correct > best_acc:
                        best_c, best_acc = C, correct
            chosen.append(float(best_c))
            Xtr, Xte = _fold_scale(X, tr, te)
            pred[te] = _logistic(best_c).fit(Xtr, labels[tr]).predict(Xte)
    return {
        "accuracy": float((pred == labels).mean()),
        "chance": float(counts.max() / counts.sum()),
        "classes": int(len(classes)),
        "C": chosen,
        "pred": pred,
    }


def center_within_groups(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None):
    """X and y minus their mean within every group (overall when ``groups`` is None)."""
    if groups is None:
        return X - X.mean(0), y - y.mean()
    Xc, yc = X.copy(), y.copy()
    for g in np.unique(groups):
        m = groups == g
        Xc[m] -= Xc[m].mean(0)
        yc[m] -= yc[m].mean()
    return Xc, yc


def permute_within_groups(y: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """y shuffled within every group (overall when ``groups`` is None)."""
    if groups is None:
        return rng.permutation(y)
    out = y.copy()
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        out[idx] = y[rng.permutation(idx)]
    return out


# ----------------------------------------------------------------------------- every probe set, every layer
@single_threaded
def decode_sets(embeddings: Mapping[str, np.ndarray], sets: Sequence[Any], *, layer: int, folds: int = 5,
                seed: int = 0, log=None) -> dict[str, Any]:
    """Decodability of every probe set's targets (a sweep: only its varied one) at every layer.

    ``embeddings[set.name]``: (N, L, D); ``layer``: where the shuffled-target baseline is fit.  Per set and
    target: R^2 (and within-base R^2 for sweeps) or accuracy per layer, or why it was skipped."""
    log = log or (lambda *_: None)
    decoding: dict[str, Any] = {}
    for s in sets:
        X = np.asarray(embeddings[s.name], dtype=np.float64)
        L = X.shape[1]
        entries = {}
        targets = [s.varied] if s.varied else list(s.targets)
        for t in targets:
            m = s.valid(t)
            y, g = s.targets[t][m], s.groups[m]
            kind = s.kind(t)
            if m.sum() < 10 or len(np.unique(g)) < 2 or len(np.unique(y)) < 2:
                entries[t] = {"kind": kind, "clips": int(m.sum()), "skipped": "too few clips, groups or values"}
                continue
            rec: dict[str, Any] = {"kind": kind, "clips": int(m.sum()), "groups": int(len(np.unique(g)))}
            if kind == "continuous":
                res = [ridge_cv(X[m, l], y, g, folds, seed=seed) for l in range(L)]
                rec["r2"] = [r["r2"] for r in res]
                rec["corr"] = [r["corr"] for r in res]
                rec["alpha_rel"] = [float(np.median(r["alpha_rel"])) for r in res]
                if s.varied:  # within-base: is the factor's direction of change shared across base clips?
                    rec["r2_within"] = [ridge_cv(*center_within_groups(X[m, l], y, g), g, folds, seed=seed)["r2"]
                                        for l in range(L)]
                perm = permute_within_groups(y, g if s.varied else None, np.random.default_rng(seed + 99))
                rec["r2_shuffled"] = ridge_cv(X[m, layer], perm, g, folds, seed=seed)["r2"]
            else:
                res = [logistic_cv(X[m, l], y, g, folds, seed=seed) for l in range(L)]
                rec["accuracy"] = [r["accuracy"] for r in res]
                rec["chance"] = res[0]["chance"]
                rec["classes"] = res[0]["classes"]
                perm = permute_within_groups(y, g if s.varied else None, np.random.default_rng(seed + 99))
                rec["accuracy_shuffled"] = logistic_cv(X[m, layer], perm, g, folds, seed=seed, Cs=(0.1,))["accuracy"]
            entries[t] = rec
            log(f"  decode {s.name}/{t}: "
                + (f"R2 last={rec['r2'][-1]:.3f}" if kind == "continuous"
                   else f"acc last={rec['accuracy'][-1]:.3f} (chance {rec['chance']:.3f})"))
        decoding[s.name] = entries
    return decoding


# ----------------------------------------------------------------------------- transfer to real audio
@single_threaded
def transfer_probe(X_syn: np.ndarray, y_syn: np.ndarray, groups_syn: np.ndarray | None, X_real: np.ndarray,
                   y_real: np.ndarray, groups_real: Mapping[str, np.ndarray] | None = None, folds: int = 5,
                   seed: int = 0) -> dict[str, Any]:
    """A ridge probe fit on synthetic clips, applied unchanged to real ones; and probes fit on the real
    clips by group-CV for comparison.

    The synthetic probe works in the synthetic set's standardized space (its mean and std, applied to the
    real embeddings too), penalty by group-CV on the synthetic set.  Reported on the real clips: R^2 of its
    raw predictions (offset and scale must transfer too), Pearson correlation (they need not), and the
    affine fit ``pred = slope * true + intercept``.  ``groups_real``: name -> groups for the real CV
    (e.g. by recording, by speaker).
    """
    Xs, mu, sd = standardize(X_syn)
    y_syn = np.asarray(y_syn, dtype=np.float64)
    y_real = np.asarray(y_real, dtype=np.float64)
    groups_syn = np.arange(len(y_syn)) if groups_syn is None else np.asarray(groups_syn)
    alpha = select_alpha(X_syn, y_syn, groups_syn, seed=seed)
    ym = y_syn.mean()
    coef = RidgePath(Xs).coef((y_syn - ym)[:, None], np.array([alpha * len(y_syn)]))[0, :, 0]
    pred = (np.asarray(X_real, dtype=np.float64) - mu) / sd @ coef + ym
    ss_tot = float(((y_real - y_real.mean()) ** 2).sum())
    out: dict[str, Any] = {
        "clips": int(len(y_real)),
        "transfer_r2": 1.0 - float(((pred - y_real) ** 2).sum()) / max(ss_tot, EPS),
        "transfer_corr": float(np.corrcoef(pred, y_real)[0, 1]) if np.std(pred) > EPS else 0.0,
        "alpha_rel": alpha,
        "pred": pred,
    }
    slope, intercept = np.polyfit(y_real, pred, 1) if np.std(y_real) > EPS else (0.0, float(pred.mean()))
    out["transfer_slope"], out["transfer_intercept"] = float(slope), float(intercept)
    for name, g in (groups_real or {"clip": np.arange(len(y_real))}).items():
        try:
            res = ridge_cv(X_real, y_real, np.asarray(g), folds, seed=seed)
            out[f"real_cv_r2_{name}"] = res["r2"]
            out[f"real_cv_corr_{name}"] = res["corr"]
        except ValueError as err:
            out[f"real_cv_r2_{name}"] = None
            out[f"real_cv_note_{name}"] = str(err)
    return out
