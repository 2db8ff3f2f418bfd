"""Numerics of ``audiopg analyze``: decodability, orthogonality and mutual information of factors.

Everything here works on plain arrays: embeddings ``X`` of shape (clips, units)
(one layer at a time), targets ``y`` (clips,), and *groups* (clips,): clips of
one group never sit on both sides of a train/test split.

Decodability
------------
* Continuous factors: ridge regression, R^2 of the out-of-fold predictions
  pooled over the outer folds (``1 - SS_res / SS_tot``; 0 = predicting the
  mean, negative = worse).  Outer and inner folds are group folds
  (:func:`group_folds`).  Within every training fold the units are z-scored
  with the fold's own mean and std and the target is centered; the ridge
  penalty is picked from a grid (``n_train * 10^[-4..4]``, scale-free for
  z-scored units) by inner group-CV on the training fold only.
* Sweeps also get a *within-base* R^2: embeddings and targets centered on
  each base clip's own mean before the same group-CV ridge.  The raw R^2 asks
  for the factor's absolute value across base clips that differ in every
  other factor (a mean-pooled embedding of a quiet second event barely moves
  next to the differences between base clips); the within-base R^2 asks
  whether the factor moves every base clip's embedding the same way, which is
  what the controlled directions below use.  Centering uses only the held-out
  base clip's own (unlabelled) embeddings and the sweep's known value grid.
* Categorical factors: multinomial logistic regression, out-of-fold accuracy,
  ``C`` picked by inner group-CV the same way.  Chance level = the majority
  class's share of the clips scored.

Probe directions and angles
---------------------------
All directions live in one *standardized embedding space* per layer: units
z-scored with the mean and std of the ``random`` probe set at that layer.

* Decoding direction of a factor: the ridge coefficient vector ``w`` that
  predicts the (standardized) factor from the standardized embedding, penalty
  picked by group-CV, scaled to unit length.  For a sweep it is fit after
  removing every base clip's mean embedding and mean target (within-base
  centering), so it captures only how embeddings move when that one factor
  changes with everything else held fixed.
* Encoding direction: the per-unit regression slope of the (centered)
  embedding on the factor, ``X^T y / y^T y`` -- where the embedding moves as
  the factor grows (the "pattern"; decoders can be orthogonal while patterns
  are not, so both are reported).
* Angle between factors a, b: ``arccos(w_a . w_b / |w_a| |w_b|)`` in degrees,
  signed by the factors' own orientation (0 = same direction, 90 = orthogonal,
  180 = opposite).
* Estimation noise: a direction fit on finite data scatters around the true
  one (for ridge by roughly ``sqrt(D / (n R^2))`` rad), which pushes angles
  towards 90 deg.  Each factor therefore also gets a *split-half* angle: the
  angle between its directions fit on two random halves of its clips (base
  clips for sweeps).  Two factors can only be called collinear or
  entangled down to about that angle; it is a conservative floor (half the
  data scatters more).
* Rank-k probe subspaces: multi-output ridge.  The factor is expanded into
  ``k`` features, the Legendre polynomials P_1..P_k of its rank mapped to
  [-1, 1] (P_1 is a monotone copy of the factor, P_2, P_3 its curvature), each
  decoded by ridge (same penalty, same centering as above); the subspace is
  the orthonormalized span of those ``k`` directions: where the factor is
  linearly *or along a curve* readable.  Principal angles between two such
  subspaces via the SVD of ``Q_a^T Q_b``; the smallest one says how close the
  nearest pair of directions are.  (PLS weights were tried and rejected:
  after the first component they follow the embedding's high-variance axes,
  so any two factors' subspaces met at ~0 deg.)

Chance levels for angles
------------------------
* Random directions: for two independent uniformly random unit vectors in
  ``D`` dimensions ``cos^2(theta) ~ Beta(1/2, (D-1)/2)``: the angle has mean
  90 deg and standard deviation ~ ``1/sqrt(D)`` rad (:func:`random_angle_chance`,
  exact quantiles).  Random k-subspaces: sampled (:func:`random_subspace_chance`).
* Permutation baseline: the same probes fit on shuffled targets (within base
  clips for sweeps), P times per factor; the angles between the shuffled
  probes of factors a and b (all P x P combinations) are the null for the
  pair.  Ridge probes lean towards the embedding's high-variance axes (its
  effective dimension is far below D), so this null is usually much wider than
  the random-direction one: "orthogonal" means an angle inside it, "entangled"
  one below it; an angle below the split-half floor cannot be told from 0.

Mutual information
------------------
``sklearn.feature_selection.mutual_info_regression`` / ``mutual_info_classif``
(Kraskov k-NN estimator, k = 3), in nats, unit by unit on up to ``max_units``
units (a seeded random subset when there are more).  Concentration of a unit
``u``: ``1 - H(p_u) / log(F)`` where ``p_u`` is its MI spread over the F
factors, normalized to sum to 1 (1 = all its information about one factor, 0
= evenly spread); units whose total MI is below max(0.02 nats, 5 % of the
most informative unit's) get none (estimator noise).  Per factor, a MIG-style
gap: the MI of its most informative unit minus that of the runner-up, also
relative to the top.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "group_folds", "standardize", "ridge_cv", "select_alpha", "logistic_cv", "probe_directions",
    "angle_deg", "principal_angles_deg", "rank_features", "single_thread", "random_angle_chance", "random_subspace_chance",
    "mutual_information", "mi_summary", "participation_ratio", "pairwise_angles", "analyze_layers",
]

ALPHA_GRID = np.logspace(-4, 4, 17)  # times n_train (z-scored units)
C_GRID = (0.01, 0.1, 1.0)
EPS = 1e-12


def single_thread():
    """Context: BLAS on one thread.  Small SVDs and solves are far faster so on a shared CPU
    (multi-threaded OpenBLAS was 100x slower on 2 busy cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _blas1(fn):
    import functools

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
class _RidgePath:
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


@_blas1
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
        coef = _RidgePath(Xtr).coef((y[tr] - ym)[:, None], grid * len(tr))[:, :, 0]  # (A, D)
        pred = Xte @ coef.T + ym  # (n_te, A)
        sse += ((pred - y[te, None]) ** 2).sum(0)
    return float(grid[int(np.argmin(sse))])


@_blas1
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
        coef = _RidgePath(Xtr).coef((y[tr] - ym)[:, None], np.array([alpha * len(tr)]))[0, :, 0]
        pred[te] = Xte @ coef + ym
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((pred - y) ** 2).sum()) / max(ss_tot, EPS)
    corr = float(np.corrcoef(pred, y)[0, 1]) if np.std(pred) > EPS and np.std(y) > EPS else 0.0
    return {"r2": r2, "corr": corr, "alpha_rel": [float(a) for a in alphas], "pred": pred}


# ----------------------------------------------------------------------------- logistic
def _logistic(C: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=300, tol=1e-3)


@_blas1
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


# ----------------------------------------------------------------------------- directions
def _group_center(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None):
    if groups is None:
        return X - X.mean(0), y - y.mean()
    Xc, yc = X.copy(), y.copy()
    for g in np.unique(groups):
        m = groups == g
        Xc[m] -= Xc[m].mean(0)
        yc[m] -= yc[m].mean()
    return Xc, yc


def _permute_within(y: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if groups is None:
        return rng.permutation(y)
    out = y.copy()
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        out[idx] = y[rng.permutation(idx)]
    return out


def rank_features(y: np.ndarray, k: int) -> np.ndarray:
    """Legendre polynomials P_1..P_k of the factor's rank mapped to [-1, 1], (n, k'), k' = min(k, distinct - 1)."""
    from numpy.polynomial import legendre
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=np.float64)
    k = max(0, min(int(k), len(np.unique(y)) - 1))
    u = 2.0 * (rankdata(y) - 1.0) / max(len(y) - 1, 1) - 1.0
    return np.stack([legendre.legval(u, np.eye(d + 2)[d + 1]) for d in range(k)], 1) if k else np.zeros((len(y), 0))


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > EPS, n, 1.0)


@dataclass
class Directions:
    """Probe directions of one factor in the standardized space of one layer."""

    decode: np.ndarray  # (D,) unit ridge direction
    encode: np.ndarray  # (D,) unit encoding direction (pattern)
    subspace: np.ndarray  # (D, k) orthonormal basis of the ridge directions of the rank polynomials
    null_decode: np.ndarray  # (P, D) from shuffled targets
    null_encode: np.ndarray  # (P, D)
    null_subspace: list[np.ndarray]  # P x (D, k)
    alpha_rel: float
    clips: int
    split_half: dict[str, float] = field(default_factory=dict)  # angle between the two halves' directions


def _orthonormal(W: np.ndarray) -> np.ndarray:
    if W.shape[1] == 0:
        return W
    Q, R = np.linalg.qr(W)
    return Q[:, np.abs(np.diag(R)) > 1e-9]


def probe_directions(Xs: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, center_groups: bool = False,
                     k: int = 3, permutations: int = 20, seed: int = 0, alpha: float | None = None) -> Directions:
    """Decoding (ridge), encoding and rank-k directions of ``y`` in the already standardized ``Xs``,
    plus the same fit on ``permutations`` shuffled targets (within groups when ``center_groups``).
    ``alpha``: relative ridge penalty (times the clips); picked by group-CV when None."""
    with single_thread():
        Xs = np.asarray(Xs, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        grp = np.asarray(groups) if (center_groups and groups is not None) else None
        rng = np.random.default_rng(seed)
        ys = [y] + [_permute_within(y, grp, rng) for _ in range(permutations)]
        Xc, _ = _group_center(Xs, y, grp)

        def targets(v: np.ndarray) -> np.ndarray:  # (n, 1 + k'): the factor, then its rank polynomials
            T = np.concatenate([v[:, None], rank_features(v, k)], 1)
            if grp is None:
                T = T - T.mean(0)
            else:
                for g in np.unique(grp):
                    T[grp == g] -= T[grp == g].mean(0)
            sd = T.std(0)
            return T / np.where(sd > EPS, sd, 1.0)

        Ts = [targets(v) for v in ys]
        if alpha is None:
            cv_groups = np.asarray(groups) if groups is not None else np.arange(len(y))
            alpha = select_alpha(Xc, Ts[0][:, 0], cv_groups, seed=seed)
        path = _RidgePath(Xc)
        widths = [T.shape[1] for T in Ts]
        coef = path.coef(np.concatenate(Ts, 1), np.array([alpha * len(y)]))[0]  # (D, sum widths)
        Y = np.concatenate(Ts, 1)
        enc = Xc.T @ Y / np.maximum((Y * Y).sum(0), EPS)
        offsets = np.cumsum([0] + widths)
        dec_main = np.stack([coef[:, offsets[p]] for p in range(len(Ts))])  # (1 + P, D)
        enc_main = np.stack([enc[:, offsets[p]] for p in range(len(Ts))])
        subspaces = [_orthonormal(coef[:, offsets[p] + 1:offsets[p + 1]]) for p in range(len(Ts))]
        split = _split_half(Xc, Ts[0][:, 0], groups, alpha, seed)
    return Directions(
        decode=_unit(dec_main[0]), encode=_unit(enc_main[0]), subspace=subspaces[0],
        null_decode=_unit(dec_main[1:]), null_encode=_unit(enc_main[1:]), null_subspace=subspaces[1:],
        alpha_rel=float(alpha), clips=int(len(y)), split_half=split,
    )


def _split_half(Xc: np.ndarray, yc: np.ndarray, groups: np.ndarray | None, alpha: float, seed: int) -> dict[str, float]:
    """Angles between the decoding (and encoding) directions fit on two random halves of the groups: how far
    apart two estimates of the *same* direction land from sampling noise alone (a floor for "collinear")."""
    groups = np.arange(len(yc)) if groups is None else np.asarray(groups)
    uniq = np.random.default_rng(seed + 7).permutation(np.unique(groups))
    if len(uniq) < 4:
        return {}
    first = np.isin(groups, uniq[: len(uniq) // 2])
    dec, enc = [], []
    for m in (first, ~first):
        X, y = Xc[m] - Xc[m].mean(0), yc[m] - yc[m].mean()
        dec.append(_RidgePath(X).coef(y[:, None], np.array([alpha * m.sum()]))[0, :, 0])
        enc.append(X.T @ y)
    return {"decode": angle_deg(*dec), "encode": angle_deg(*enc)}


def angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    """Angle between two vectors in degrees, in [0, 180]."""
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu < EPS or nv < EPS:
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(float(u @ v) / (nu * nv), -1.0, 1.0))))


def _angles_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """All angles between the rows of A and of B, degrees, flattened."""
    c = _unit(A) @ _unit(B).T
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0))).ravel()


def principal_angles_deg(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Principal angles (ascending, degrees) between the column spaces of A (D, a) and B (D, b)."""
    if A.shape[1] == 0 or B.shape[1] == 0:
        return np.zeros(0)
    Qa, _ = np.linalg.qr(A)
    Qb, _ = np.linalg.qr(B)
    s = np.linalg.svd(Qa.T @ Qb, compute_uv=False)
    return np.degrees(np.arccos(np.clip(s, -1.0, 1.0)))


# ----------------------------------------------------------------------------- chance levels
def random_angle_chance(dim: int, samples: int = 0, seed: int = 0) -> dict[str, Any]:
    """Angle between two independent uniformly random directions in ``dim`` dimensions.

    Exact: ``cos^2 ~ Beta(1/2, (dim-1)/2)``, mean 90 deg, density ~ sin^(dim-2).  With
    ``samples`` > 0 also a sampled estimate (Gaussian vectors) as a check."""
    from scipy import stats

    if dim < 2:
        raise ValueError("dim must be >= 2")
    theta = np.linspace(0.0, math.pi, 20001)
    logw = (dim - 2) * np.log(np.maximum(np.sin(theta), 1e-300))
    w = np.exp(logw - logw.max())
    w /= w.sum()
    std = float(np.degrees(np.sqrt((w * (theta - math.pi / 2) ** 2).sum())))
    out: dict[str, Any] = {"dim": int(dim), "mean": 90.0, "std": std,
                           "std_approx_1_over_sqrt_dim": float(np.degrees(1 / math.sqrt(dim)))}
    for q in (0.005, 0.025, 0.05):
        c = math.sqrt(stats.beta.ppf(1 - 2 * q, 0.5, (dim - 1) / 2))
        lo = math.degrees(math.acos(c))
        out[f"q{q * 100:g}"] = lo
        out[f"q{100 - q * 100:g}"] = 180.0 - lo
    if samples:
        rng = np.random.default_rng(seed)
        a = _angles_rows(rng.standard_normal((samples, dim)), rng.standard_normal((1, dim)))
        b = np.array([angle_deg(*rng.standard_normal((2, dim))) for _ in range(samples)])
        s = np.concatenate([a, b])
        out["sampled"] = {"n": int(len(s)), "mean": float(s.mean()), "std": float(s.std())}
    return out


@_blas1
def random_subspace_chance(dim: int, k: int, samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Principal angles between two independent random k-dimensional subspaces of ``dim`` dimensions (sampled)."""
    rng = np.random.default_rng(seed)
    angles = np.stack([principal_angles_deg(rng.standard_normal((dim, k)), rng.standard_normal((dim, k)))
                       for _ in range(samples)])
    return {"dim": int(dim), "k": int(k), "samples": int(samples),
            "smallest": _dist(angles[:, 0]), "mean_angle": _dist(angles.mean(1))}


def _dist(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"n": 0}
    return {"n": int(len(x)), "mean": float(x.mean()), "std": float(x.std()),
            "q2.5": float(np.percentile(x, 2.5)), "q97.5": float(np.percentile(x, 97.5))}


@_blas1
def participation_ratio(X: np.ndarray) -> float:
    """Effective dimension (sum lambda)^2 / sum lambda^2 of the covariance of X."""
    Xc = np.asarray(X, dtype=np.float64) - np.mean(X, 0)
    s = np.linalg.svd(Xc, compute_uv=False) ** 2
    return float(s.sum() ** 2 / max((s ** 2).sum(), EPS))


def _smallest_principal_angles(As: Sequence[np.ndarray], Bs: Sequence[np.ndarray]) -> np.ndarray:
    """Smallest principal angle (deg) for every pair (a, b) of orthonormal bases from As x Bs."""
    As = [a for a in As if a.shape[1]]
    Bs = [b for b in Bs if b.shape[1]]
    if not As or not Bs:
        return np.zeros(0)
    out = []
    for a in As:
        for kb in {b.shape[1] for b in Bs}:
            stack = np.stack([b for b in Bs if b.shape[1] == kb])  # (m, D, kb)
            s = np.linalg.svd(np.einsum("dk,mdl->mkl", a, stack), compute_uv=False)[:, 0]
            out.append(np.degrees(np.arccos(np.clip(s, -1.0, 1.0))))
    return np.concatenate(out)


def pairwise_angles(dirs: Mapping[str, Directions]) -> dict[str, Any]:
    """Angle matrices (decoding, encoding), principal angles and permutation nulls for every pair."""
    names = list(dirs)
    F = len(names)
    dec = np.full((F, F), np.nan)
    enc = np.full((F, F), np.nan)
    pairs: dict[str, Any] = {}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            dec[i, j] = angle_deg(dirs[a].decode, dirs[b].decode)
            enc[i, j] = angle_deg(dirs[a].encode, dirs[b].encode)
            if j <= i:
                continue
            da, db = dirs[a], dirs[b]
            null_dec = _angles_rows(da.null_decode, db.null_decode) if len(da.null_decode) and len(db.null_decode) else np.zeros(0)
            null_enc = _angles_rows(da.null_encode, db.null_encode) if len(da.null_encode) and len(db.null_encode) else np.zeros(0)
            pa = principal_angles_deg(da.subspace, db.subspace)
            null_pa = _smallest_principal_angles(da.null_subspace, db.null_subspace)
            rec = {
                "decode": dec[i, j], "encode": enc[i, j],
                "null_decode": _dist(null_dec), "null_encode": _dist(null_enc),
                "principal": [float(x) for x in pa], "null_principal_smallest": _dist(null_pa),
            }
            for key, obs, null in (("decode", dec[i, j], null_dec), ("encode", enc[i, j], null_enc)):
                if len(null) and np.std(null) > EPS:
                    rec[f"{key}_z"] = float((obs - null.mean()) / null.std())
                    # two-sided: how often a null angle is at least as far from the null mean
                    rec[f"{key}_p"] = float((np.abs(null - null.mean()) >= abs(obs - null.mean())).mean())
            pairs[f"{a}|{b}"] = rec
    return {"factors": names, "decode": dec.tolist(), "encode": enc.tolist(), "pairs": pairs,
            "split_half": {n: dirs[n].split_half for n in names},
            "alpha_rel": {n: dirs[n].alpha_rel for n in names}, "clips": {n: dirs[n].clips for n in names}}


# ----------------------------------------------------------------------------- mutual information
@_blas1
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


def mi_summary(M: np.ndarray, names: Sequence[str], floor: float = 0.02, relative_floor: float = 0.05) -> dict[str, Any]:
    """Concentration of each unit's MI over factors and the per-factor top-unit gap (see the module docstring).

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


# ----------------------------------------------------------------------------- one encoder, all layers
@_blas1
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
    log=None,
) -> dict[str, Any]:
    """The full analysis of one encoder.

    ``embeddings[set.name]``: (N, L, D) for every probe set in ``sets`` (objects with ``name``,
    ``targets``, ``groups``, ``varied``, ``kind(target)`` and ``valid(target)``, e.g.
    :class:`audiopg.analysis.probesets.ProbeSet`); one of them must be named ``random`` (the reference
    for standardization, the joint probes and MI).
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

    # -- decodability, every set x its targets x every layer
    decoding: dict[str, Any] = {}
    for s in sets:
        X = np.asarray(embeddings[s.name], dtype=np.float64)
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
                    rec["r2_within"] = [ridge_cv(*_group_center(X[m, l], y, g), g, folds, seed=seed)["r2"]
                                        for l in range(L)]
                perm = _permute_within(y, g if s.varied else None, np.random.default_rng(seed + 99))
                rec["r2_shuffled"] = ridge_cv(X[m, layer], perm, g, folds, seed=seed)["r2"]
            else:
                res = [logistic_cv(X[m, l], y, g, folds, seed=seed) for l in range(L)]
                rec["accuracy"] = [r["accuracy"] for r in res]
                rec["chance"] = res[0]["chance"]
                rec["classes"] = res[0]["classes"]
                perm = _permute_within(y, g if s.varied else None, np.random.default_rng(seed + 99))
                rec["accuracy_shuffled"] = logistic_cv(X[m, layer], perm, g, folds, seed=seed, Cs=(0.1,))["accuracy"]
            entries[t] = rec
            log(f"  decode {s.name}/{t}: " + (f"R2 last={rec['r2'][-1]:.3f}" if kind == "continuous"
                                                else f"acc last={rec['accuracy'][-1]:.3f} (chance {rec['chance']:.3f})"))
        decoding[s.name] = entries
    out["decoding"] = decoding

    # -- directions and angles, every layer: controlled (sweeps) and joint (random set)
    controlled, joint = [], []
    for l in range(L):
        mu, sd = stats[l]
        cdirs: dict[str, Directions] = {}
        for s in sets:
            if not s.varied or s.kind(s.varied) != "continuous":
                continue
            m = s.valid(s.varied)
            Xs = (np.asarray(embeddings[s.name], dtype=np.float64)[m, l] - mu) / sd
            cdirs[s.varied] = probe_directions(Xs, s.targets[s.varied][m], s.groups[m], center_groups=True, k=k,
                                               permutations=permutations, seed=seed + l)
        jdirs: dict[str, Directions] = {}
        rs = by_name["random"]
        Xr = (ref[:, l] - mu) / sd
        for t in rs.targets:
            if rs.kind(t) != "continuous":
                continue
            m = rs.valid(t)
            if m.sum() < 10 or len(np.unique(rs.targets[t][m])) < 2:
                continue
            jdirs[t] = probe_directions(Xr[m], rs.targets[t][m], None, k=k, permutations=permutations, seed=seed + l)
        controlled.append(pairwise_angles(cdirs) if len(cdirs) >= 2 else None)
        joint.append(pairwise_angles(jdirs) if len(jdirs) >= 2 else None)
    out["angles"] = {"controlled": controlled, "joint": joint}
    out["chance"] = {"random_direction": random_angle_chance(D, samples=2000, seed=seed),
                     "random_subspace": random_subspace_chance(D, k, seed=seed)}
    log(f"  angles done ({L} layers)")

    # -- mutual information on the random set at the analysis layer
    rs = by_name["random"]
    mi_targets = {t: (rs.targets[t], rs.kind(t)) for t in rs.targets}
    out["mi"] = mutual_information(ref[:, layer], mi_targets, max_units=mi_units, seed=seed)
    out["mi"]["layer"] = layer
    log("  mutual information done")
    return out


# ----------------------------------------------------------------------------- transfer to real audio
@_blas1
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
    coef = _RidgePath(Xs).coef((y_syn - ym)[:, None], np.array([alpha * len(y_syn)]))[0, :, 0]
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
