"""Directions of factors in an embedding space and the angles between them, with their chance levels.

Decoding (ridge) and encoding (pattern) directions, rank-k probe subspaces and principal angles, split-half
floors, random-direction and permutation nulls; the method and how to read the angles are in docs/analysis.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.polynomial import legendre

from audiopg.analysis.decoding import (
    EPS,
    RidgePath,
    center_within_groups,
    permute_within_groups,
    select_alpha,
    single_thread,
    single_threaded,
)

__all__ = [
    "Directions", "rank_features", "probe_directions", "angle_deg", "principal_angles_deg", "random_angle_chance",
    "random_subspace_chance", "participation_ratio", "pairwise_angles", "layer_angles",
]


def rank_features(y: np.ndarray, k: int) -> np.ndarray:
    """Legendre polynomials P_1..P_k of the factor's rank mapped to [-1, 1], (n, k'), k' = min(k, distinct - 1)."""
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
        ys = [y] + [permute_within_groups(y, grp, rng) for _ in range(permutations)]
        Xc, _ = center_within_groups(Xs, y, grp)

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
        path = RidgePath(Xc)
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
        dec.append(RidgePath(X).coef(y[:, None], np.array([alpha * m.sum()]))[0, :, 0])
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


@single_threaded
def random_subspace_chance(dim: int, k: int, samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Principal angles between two independent random k-dimensional subspaces of ``dim`` dimensions (sampled)."""
    rng = np.random.default_rng(seed)
    angles = np.stack([principal_angles_deg(rng.standard_normal((dim, k)), rng.standard_normal((dim, k)))
                       for _ in range(samples)])
    return {"dim": int(dim), "k": int(k), "samples": int(samples),
            "smallest": _distribution(angles[:, 0]), "mean_angle": _distribution(angles.mean(1))}


def _distribution(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"n": 0}
    return {"n": int(len(x)), "mean": float(x.mean()), "std": float(x.std()),
            "q2.5": float(np.percentile(x, 2.5)), "q97.5": float(np.percentile(x, 97.5))}


@single_threaded
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
            null_dec = (_angles_rows(da.null_decode, db.null_decode) if len(da.null_decode) and len(db.null_decode)
                        else np.zeros(0))
            null_enc = (_angles_rows(da.null_encode, db.null_encode) if len(da.null_encode) and len(db.null_encode)
                        else np.zeros(0))
            pa = principal_angles_deg(da.subspace, db.subspace)
            null_pa = _smallest_principal_angles(da.null_subspace, db.null_subspace)
            rec = {
                "decode": dec[i, j], "encode": enc[i, j],
                "null_decode": _distribution(null_dec), "null_encode": _distribution(null_enc),
                "principal": [float(x) for x in pa], "null_principal_smallest": _distribution(null_pa),
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


# ----------------------------------------------------------------------------- every layer
@single_threaded
def layer_angles(embeddings: Mapping[str, np.ndarray], sets: Sequence[Any],
                 stats: Sequence[tuple[np.ndarray, np.ndarray]], *, k: int = 3, permutations: int = 20,
                 seed: int = 0) -> dict[str, list]:
    """Per layer the :func:`pairwise_angles` of the *controlled* directions (each continuous sweep's factor,
    within-base centered) and of the *joint* ones (every continuous target of the ``random`` set), in the
    space standardized with ``stats[layer]`` = (mean, std); None where fewer than two factors."""
    rs = next(s for s in sets if s.name == "random")
    ref = np.asarray(embeddings["random"], dtype=np.float64)
    controlled, joint = [], []
    for l in range(ref.shape[1]):
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
    return {"controlled": controlled, "joint": joint}
