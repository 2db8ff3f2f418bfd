"""The linear probe of frozen features: logistic or ridge regression, regularization chosen on training data only.

``StandardScaler`` + ``LogisticRegression`` (one-vs-rest for multi-label) or ``Ridge`` in one scikit-learn
``Pipeline``; C / alpha chosen on the validation split or by an inner cross-validation grouped like the outer
split; the test part is touched once (docs/evaluation.md, "The linear probe").
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
import torch

from audiopg.core.errors import AudioPGError, ConfigError
from audiopg.core.io import file_sha256
from audiopg.eval.datasets.base import MULTI, REGRESSION, SINGLE, Dataset, Split
from audiopg.eval.features import (
    HANDCRAFTED_FBANK,
    EncoderFeatures,
    FeatureCache,
    HandcraftedFeatures,
    default_cache_dir,
    extract_features,
)
from audiopg.eval.metrics import FoldResult, ModelResult, task_score
from audiopg.eval.report import write_report
from audiopg.model.checkpoint import resolve_encoder_path
from audiopg.model.encoder import Encoder

__all__ = [
    "C_GRID",
    "ALPHA_GRID",
    "BASELINES",
    "fit_probe",
    "probe_features",
    "parse_baselines",
    "run_probe",
    "truncation_note",
]

#: logistic-regression inverse regularization strengths searched (6 values, 1e-3 .. 1e2)
C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))
#: ridge penalties searched for continuous targets (6 values, 1e-1 .. 1e4)
ALPHA_GRID = tuple(float(a) for a in np.logspace(-1, 4, 6))
MAX_ITER = 1000
INNER_SPLITS = 5


# ----------------------------------------------------------------------------- the probe
def _pipeline(task_type: str, param: float, seed: int, warm_start: bool = False) -> Any:
    """StandardScaler + LogisticRegression (one-vs-rest for multi-label) or Ridge, as one Pipeline."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if task_type == REGRESSION:
        model: Any = Ridge(alpha=param)
    else:
        model = LogisticRegression(C=param, solver="lbfgs", max_iter=MAX_ITER, random_state=seed,
                                   warm_start=warm_start and task_type == SINGLE)
        if task_type == MULTI:
            model = OneVsRestClassifier(model)
    return Pipeline([("scale", StandardScaler()), ("clf", model)])


def _set_param(model: Any, task_type: str, param: float) -> Any:
    key = {REGRESSION: "clf__alpha", SINGLE: "clf__C", MULTI: "clf__estimator__C"}[task_type]
    return model.set_params(**{key: param})


def _output(task_type: str, model: Any, x: np.ndarray) -> np.ndarray:
    """What :func:`task_score` scores: class probabilities (multi-label) or predictions."""
    return model.predict_proba(x) if task_type == MULTI else model.predict(x)


def _inner_cv(task_type: str, y: np.ndarray, groups: np.ndarray | None, seed: int) -> tuple[Any, int]:
    """The inner splitter for model selection on a training part, grouped like the outer split."""
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        StratifiedGroupKFold,
        StratifiedKFold,
    )

    n = len(y)
    if groups is not None:
        n_groups = len(set(groups.tolist()))
        k = min(INNER_SPLITS, n_groups)
        if k < 2:
            raise AudioPGError("model selection needs at least 2 groups in the training part")
        if task_type == SINGLE:
            counts = np.bincount(y)
            if int(counts[counts > 0].min()) >= k:
                return StratifiedGroupKFold(k, shuffle=True, random_state=seed), k
        return GroupKFold(k, shuffle=True, random_state=seed), k
    if task_type == SINGLE:
        counts = np.bincount(y)
        min_count = int(counts[counts > 0].min())
        k = min(INNER_SPLITS, min_count)
        if k >= 2:
            return StratifiedKFold(k, shuffle=True, random_state=seed), k
    k = min(INNER_SPLITS, n)
    if k < 2:
        raise AudioPGError("model selection needs at least 2 training examples")
    return KFold(k, shuffle=True, random_state=seed), k


def _fit_quiet(model: Any, x: np.ndarray, y: np.ndarray, counter: list[int]) -> Any:
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*Label not .* is present in all training examples.*")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*Label .* is present in all training.*")
        model.fit(x, y)
    counter[0] += sum(1 for w in caught if issubclass(w.category, ConvergenceWarning))
    return model


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    split: Split,
    task_type: str,
    *,
    groups: np.ndarray | None = None,
    seed: int = 0,
    grid: Sequence[float] | None = None,
    keep_predictions: bool = True,
    convergence: list[int] | None = None,
    threads: int | None = 1,
) -> FoldResult:
    """Fit the probe on ``split.train`` (choosing C / alpha there) and score it on ``split.test``.

    Model selection: on ``split.val`` when present; otherwise a 5-fold (or
    fewer) inner cross-validation over ``split.train`` -- grouped by ``groups``
    when given (pass the items' groups when the outer split is grouped),
    stratified for single-label targets.  The grid is walked in ascending
    order with warm starts (same optimum, fewer lbfgs iterations); the selected
    setting is refitted from scratch on the whole training part.  ``threads``
    caps the BLAS/OpenMP threads of the fits (1 by default: these problems are
    small, and oversubscribed threads on a shared machine slow lbfgs by 10-50x);
    None leaves the libraries' defaults.
    """
    from threadpoolctl import threadpool_limits

    grid = tuple(sorted(grid or (ALPHA_GRID if task_type == REGRESSION else C_GRID)))
    convergence = convergence if convergence is not None else [0]
    tr, te = np.asarray(split.train), np.asarray(split.test)
    x_tr, y_tr = x[tr], y[tr]
    if task_type == SINGLE and len(np.unique(y_tr)) < 2:
        raise AudioPGError(f"split {split.name}: the training part holds a single class")
    with (threadpool_limits(limits=threads) if threads else contextlib.nullcontext()):
        if split.val is not None and len(split.val):
            va = np.asarray(split.val)
            scores = []
            path_model = _pipeline(task_type, grid[0], seed, warm_start=True)
            for p in grid:
                _fit_quiet(_set_param(path_model, task_type, p), x_tr, y_tr, convergence)
                scores.append(task_score(task_type, y[va], _output(task_type, path_model, x[va]))[0])
            n_val = len(va)
        else:
            g = None if groups is None else np.asarray(groups)[tr]
            cv, _ = _inner_cv(task_type, y_tr, g, seed)
            folds = list(cv.split(x_tr, y_tr if task_type == SINGLE else np.zeros(len(tr)), g))
            per_fold = np.full((len(folds), len(grid)), np.nan)
            for f, (itr, iva) in enumerate(folds):
                if task_type == SINGLE and len(np.unique(y_tr[itr])) < 2:
                    continue
                path_model = _pipeline(task_type, grid[0], seed, warm_start=True)
                for j, p in enumerate(grid):
                    _fit_quiet(_set_param(path_model, task_type, p), x_tr[itr], y_tr[itr], convergence)
                    per_fold[f, j] = task_score(task_type, y_tr[iva], _output(task_type, path_model, x_tr[iva]))[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                scores = list(np.nanmean(per_fold, axis=0))
            n_val = 0
        scores = [s if np.isfinite(s) else -np.inf for s in scores]
        best = grid[int(np.argmax(scores))]
        model = _fit_quiet(_pipeline(task_type, best, seed), x_tr, y_tr, convergence)
        score, extra, pred = task_score(task_type, y[te], _output(task_type, model, x[te]))
    extra = {**extra, "selection_scores": [None if not np.isfinite(s) else float(s) for s in scores]}
    return FoldResult(split.name, len(tr), len(te), float(score), float(best), n_val, extra,
                      y[te] if keep_predictions and pred is not None else None,
                      pred if keep_predictions else None)


def probe_features(
    dataset: Dataset,
    features: np.ndarray,
    *,
    name: str,
    description: str,
    splits: Sequence[Split] | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    jobs: int | None = None,
) -> ModelResult:
    """Run the probe on every split of ``dataset``'s protocol with ``features`` (one row per item).

    ``jobs``: splits fitted at once, in threads (None: torch's CPU threads, which ``--threads`` sets); every fit
    uses one BLAS thread, so the results do not depend on ``jobs``.
    """
    log = log or (lambda msg: None)
    if features.shape[0] != len(dataset.items):
        raise ValueError(f"{features.shape[0]} feature rows for {len(dataset.items)} items")
    if not np.isfinite(features).all():
        raise AudioPGError(f"{name}: non-finite features")
    y = dataset.targets()
    groups = None
    if dataset.protocol.inner_grouped:
        groups = np.array([it.group if it.group is not None else f"#{i}" for i, it in enumerate(dataset.items)])
    splits = list(splits if splits is not None else dataset.splits())
    jobs = max(1, min(len(splits), jobs or torch.get_num_threads()))

    def fit(sp: Split) -> tuple[FoldResult, int, float]:
        t0, convergence = time.time(), [0]
        fr = fit_probe(features, y, sp, dataset.task_type, groups=groups, seed=seed, convergence=convergence,
                       threads=None)  # one BLAS thread for every fit: set once below, not per thread
        return fr, convergence[0], time.time() - t0

    from threadpoolctl import threadpool_limits

    folds, not_converged = [], 0
    with threadpool_limits(limits=1), ThreadPoolExecutor(jobs) as pool:
        for sp, (fr, n, seconds) in zip(splits, pool.map(fit, splits)):  # in split order, as each is ready
            folds.append(fr)
            not_converged += n
            log(f"{name} {sp.name}: {dataset.metric} {fr.score:.4f} (param {fr.param:g}, {seconds:.1f} s)")
    notes = []
    if not_converged:
        notes.append(f"lbfgs reached max_iter={MAX_ITER} without converging in {not_converged} fit(s)")
    return ModelResult(name, description, dataset.metric, folds, notes)


# ----------------------------------------------------------------------------- the whole run
def truncation_note(paths: Sequence[str]) -> str:
    """One line on the files that hold less audio than their headers promise (results.json: dataset.truncated)."""
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return (f"{len(paths)} truncated file(s), shorter than their headers promise, used as they are: "
            f"{', '.join(paths[:5])}{more}")


BASELINES = ("random", "handcrafted")


def parse_baselines(text: str | Sequence[str] | None) -> list[str]:
    """``"random,handcrafted"`` -> ["random", "handcrafted"]; "" or None -> []; unknown names raise."""
    if text is None:
        return []
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s and s.strip()]
    if names in (["none"],):
        return []
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError("baselines", f"unknown baseline {unknown[0]!r} (known: {', '.join(BASELINES)}, none)")
    return list(dict.fromkeys(names))


def run_probe(
    dataset: Dataset,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    baselines: Sequence[str] = BASELINES,
    pretrained: bool = True,
    layer: int | str | None = None,
    pool: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None | bool = None,
    max_seconds: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Probe ``dataset`` with the pretrained encoder of ``checkpoint`` and the chosen baselines; write the report.

    Returns the results dict also written to ``out_dir/results.json`` (plus
    ``results.md`` and confusion PNGs).  Without a checkpoint only the
    handcrafted baseline can run.  ``layer``/``pool``: the encoder's pooling
    (:meth:`audiopg.Encoder.embed`; None = the checkpoint's default, recorded
    resolved in the options).  ``cache_dir``: None = :func:`default_cache_dir`,
    False = no cache.
    """
    log = log or (lambda msg: None)
    t0 = time.time()
    shortest = HANDCRAFTED_FBANK.frame_length_ms / 1000  # one analysis window: less leaves nothing to describe
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and shortest <= max_seconds < math.inf):
        raise ConfigError("max_seconds", f"must be a finite number of seconds >= {shortest:g} (one analysis "
                                         f"window), got {max_seconds!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", f"must be a positive integer, got {batch_size!r}")
    baselines = list(baselines)
    extractors: list[Any] = []
    options: dict[str, Any] = {"layer": layer, "pool": pool, "seed": seed, "max_seconds": max_seconds,
                               "c_grid": list(C_GRID), "alpha_grid": list(ALPHA_GRID), "max_iter": MAX_ITER}
    wants_encoder = pretrained or "random" in baselines
    if wants_encoder:
        if checkpoint is None:
            raise AudioPGError("--checkpoint is needed for the pretrained model and the random-init baseline "
                               "(or run only --baselines handcrafted --no-pretrained)")
        path = resolve_encoder_path(checkpoint)
        sha = file_sha256(path)
        options["checkpoint"] = str(path)
        options["checkpoint_sha256"] = sha
        if pretrained:
            enc = Encoder.from_pretrained(path, device=device)
            extractors.append(EncoderFeatures("pretrained", enc, layer=layer, pool=pool, batch_size=batch_size,
                                              checkpoint_sha256=sha))
            options["device"] = str(enc.device)
        if "random" in baselines:
            enc = Encoder.from_pretrained(path, device=device, reinit=True, seed=seed)
            extractors.append(EncoderFeatures("random", enc, layer=layer, pool=pool, batch_size=batch_size,
                                              checkpoint_sha256=sha, seed=seed))
        options["layer"], options["pool"] = extractors[0].layer, extractors[0].pool
    if "handcrafted" in baselines:
        extractors.append(HandcraftedFeatures())
    if not extractors:
        raise AudioPGError("nothing to evaluate: no pretrained model and no baseline")
    if cache_dir is False:
        cache = FeatureCache(None)
    else:
        cache = FeatureCache(cache_dir if cache_dir is not None else default_cache_dir())
    truncated: dict[int, str] = {}
    feats, bad = extract_features(dataset, extractors, cache=cache, skip_bad=skip_bad, max_seconds=max_seconds,
                                  progress=progress, log=log, truncated=truncated)
    truncated_paths = [str(dataset.items[i].path) for i in sorted(truncated)]
    if bad:
        keep = np.array([i not in bad for i in range(len(dataset.items))])
        dataset = dataset.without(bad, bad)
        feats = {k: v[keep] for k, v in feats.items()}
        log(f"skipped {len(bad)} unreadable file(s)")
    t_feat = time.time() - t0
    summary = dataset.summary()
    if truncated_paths:
        summary["notes"].append(truncation_note(truncated_paths))
    splits = dataset.splits()
    models: dict[str, ModelResult] = {}
    for ex in extractors:
        models[ex.name] = probe_features(dataset, feats[ex.name], name=ex.name, description=ex.description,
                                         splits=splits, seed=seed, log=log)
    grid = ALPHA_GRID if dataset.task_type == REGRESSION else C_GRID
    grid_text = ", ".join(f"{c:g}" for c in grid)
    selection = "alpha of the ridge regression" if dataset.task_type == REGRESSION else "C of the logistic regression"
    if any(sp.val is not None for sp in splits):
        selection += f" chosen on the validation split (fit on train) from {{{grid_text}}}"
    else:
        if dataset.protocol.inner_grouped:
            how = "grouped by the same groups as the outer split"
        else:
            how = "stratified by class" if dataset.task_type == SINGLE else "unstratified"
        selection += (f" chosen by {INNER_SPLITS}-fold inner cross-validation on the training part only, {how}, "
                      f"from {{{grid_text}}}")
    results = {
        "command": "probe",
        "title": f"Linear probe: {dataset.name}" + (f" ({dataset.protocol.name})" if dataset.name == "fsdd" else ""),
        "dataset": {**summary, "truncated": truncated_paths},
        "options": options,
        "selection": selection,
        "splits": [{"name": sp.name, "n_train": len(sp.train), "n_val": 0 if sp.val is None else len(sp.val),
                    "n_test": len(sp.test)} for sp in splits],
        "models": {name: m.to_dict() for name, m in models.items()},
        "feature_seconds": t_feat,
        "runtime_s": time.time() - t0,
    }
    confusions = {}
    if dataset.task_type == SINGLE:
        confusions = {name: m.confusion(dataset.num_classes) for name, m in models.items()}
    return write_report(out_dir, results, confusions)
