"""Linear probing of frozen features: pretrained encoder, random-init encoder, handcrafted baseline.

Pipeline
--------
1. Audio: every clip is read once with :func:`audiopg.audio.io.load_audio`
   (mono, resampled with soxr to the extractor's rate).  An unreadable, empty
   or corrupt file raises :class:`~audiopg.core.errors.AudioFileError` naming it;
   with ``skip_bad`` it is left out of *every* model's evaluation and listed in
   the report.  Nothing is ever replaced by zeros.
2. Features (:class:`EncoderFeatures`, :class:`HandcraftedFeatures`): encoder
   embeddings from :meth:`audiopg.Encoder.embed` (mean-pooled patch tokens of
   the chosen layer, or the CLS token; long clips averaged over windows), or
   the 160-d log-mel statistics of :mod:`audiopg.eval.features`.  Cached as
   ``.npy`` under a key made of the checkpoint's SHA-256, the file list (paths,
   sizes, modification times) and every option that changes the numbers.
3. Probe (:func:`fit_probe`): ``StandardScaler`` + ``LogisticRegression``
   (lbfgs; one-vs-rest for multi-label) or ``Ridge`` for a continuous target,
   inside one scikit-learn ``Pipeline`` so the scaler is fitted on training data
   only.  The regularization (C from :data:`C_GRID`, or alpha from
   :data:`ALPHA_GRID`) is chosen on the training part only: on the dataset's
   validation split where it has one (Speech Commands, FSD50K), otherwise by an
   inner cross-validation grouped like the outer split (e.g. GroupKFold by
   source recording or speaker).  The test part is touched once.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from audiopg.audio.io import load_audio
from audiopg.core.errors import AudioFileError, AudioPGError
from audiopg.core.io import atomic_write_bytes, atomic_write_text, file_sha256
from audiopg.eval.datasets import MULTI, REGRESSION, SINGLE, Dataset, Split
from audiopg.eval.features import HANDCRAFTED_FBANK, handcrafted_features
from audiopg.eval.metrics import (
    accuracy,
    confusion_matrix,
    mean_average_precision,
    mean_std,
    median_absolute_error,
    r2_score,
)

__all__ = [
    "C_GRID",
    "ALPHA_GRID",
    "FoldResult",
    "ModelResult",
    "EncoderFeatures",
    "HandcraftedFeatures",
    "FeatureCache",
    "extract_features",
    "fit_probe",
    "probe_features",
    "default_cache_dir",
    "run_probe",
]

#: logistic-regression inverse regularization strengths searched (6 values, 1e-3 .. 1e2)
C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))
#: ridge penalties searched for continuous targets (6 values, 1e-1 .. 1e4)
ALPHA_GRID = tuple(float(a) for a in np.logspace(-1, 4, 6))
MAX_ITER = 1000
INNER_SPLITS = 5
CACHE_VERSION = 1


# ----------------------------------------------------------------------------- feature extractors
class EncoderFeatures:
    """Scene embeddings of an :class:`audiopg.Encoder` (pretrained, or ``reinit`` = random init)."""

    def __init__(self, name: str, encoder: Any, *, layer: int = -1, pool: str = "mean", batch_size: int = 32,
                 checkpoint_sha256: str = "", seed: int = 0):
        encoder._check_layer_pool(layer, pool)
        if layer == "all":
            raise ValueError("the probe needs a single layer, not 'all'")
        self.name = name
        self.encoder = encoder
        self.layer = layer
        self.pool = pool
        self.batch_size = int(batch_size)
        self.sample_rate = int(encoder.sample_rate)
        self.checkpoint_sha256 = checkpoint_sha256
        self.seed = int(seed)
        kind = f"random init (same architecture, seed {seed})" if encoder.reinit else "pretrained"
        self.description = f"{kind} encoder, layer {layer}, {pool}-pooled, {encoder.embedding_size}-d"

    def key(self) -> dict:
        return {"kind": "encoder", "checkpoint_sha256": self.checkpoint_sha256, "reinit": bool(self.encoder.reinit),
                "seed": self.seed if self.encoder.reinit else None, "layer": self.layer, "pool": self.pool,
                "sample_rate": self.sample_rate, "hop_seconds": self.encoder.hop_seconds,
                "pad_noise_level": self.encoder.pad_noise_level, "peak_normalize": self.encoder.peak_normalize}

    def __call__(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        out = self.encoder.embed(list(clips), sample_rate=self.sample_rate, layer=self.layer, pool=self.pool,
                                 batch_size=self.batch_size)
        return out.scene.detach().float().cpu().numpy()


class HandcraftedFeatures:
    """The 160-d log-mel mean/std baseline."""

    name = "handcrafted"
    sample_rate = HANDCRAFTED_FBANK.sample_rate
    description = "80-bin Kaldi log-mel, mean and std over frames (160-d), standardized"

    def key(self) -> dict:
        return {"kind": "handcrafted", "fbank": HANDCRAFTED_FBANK.__dict__, "stats": "mean,std(ddof=0)"}

    def __call__(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return handcrafted_features(clips, self.sample_rate)


def default_cache_dir() -> Path:
    """``$AUDIOPG_CACHE/embeddings`` or ``~/.cache/audiopg/embeddings``."""
    base = os.environ.get("AUDIOPG_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "audiopg") / "embeddings"


class FeatureCache:
    """``.npy`` feature matrices (one row per item, NaN rows for bad files) with a JSON sidecar."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = None if folder is None else Path(folder)

    @staticmethod
    def key(extractor: Any, files: list[dict], max_seconds: float | None) -> str:
        blob = json.dumps({"version": CACHE_VERSION, "extractor": extractor.key(), "files": files,
                           "max_seconds": max_seconds}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _paths(self, name: str, key: str) -> tuple[Path, Path]:
        assert self.folder is not None
        stem = f"{name}-{key[:24]}"
        return self.folder / f"{stem}.npy", self.folder / f"{stem}.json"

    def load(self, name: str, key: str) -> tuple[np.ndarray, dict] | None:
        if self.folder is None:
            return None
        npy, meta = self._paths(name, key)
        if not (npy.exists() and meta.exists()):
            return None
        try:
            info = json.loads(meta.read_text())
            x = np.load(npy, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if info.get("key") != key:
            return None
        return x, info

    def save(self, name: str, key: str, x: np.ndarray, info: dict) -> None:
        if self.folder is None:
            return
        npy, meta = self._paths(name, key)
        import io

        buf = io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        atomic_write_bytes(npy, buf.getvalue())
        atomic_write_text(meta, json.dumps({**info, "key": key}, indent=1) + "\n")


def _file_list(dataset: Dataset) -> list[dict]:
    out = []
    for it in dataset.items:
        path = str(Path(it.path).resolve())
        try:
            st = it.path.stat()
            out.append({"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        except OSError:
            out.append({"path": path, "size": None, "mtime_ns": None})
    return out


def extract_features(
    dataset: Dataset,
    extractors: Sequence[Any],
    *,
    cache: FeatureCache | None = None,
    skip_bad: bool = False,
    max_seconds: float | None = None,
    chunk: int = 64,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Features of every item for every extractor, reading each audio file once.

    Returns ``({name: (N, D) float32 with NaN rows for bad files}, {index: reason}
    of the bad files)``.  Without ``skip_bad`` the first bad file raises
    :class:`AudioFileError` naming it (also when only the cache knows about it).
    """
    cache = cache or FeatureCache(None)
    log = log or (lambda msg: None)
    files = _file_list(dataset)
    out: dict[str, np.ndarray] = {}
    bad: dict[int, str] = {}
    todo = []
    keys = {}
    for ex in extractors:
        keys[ex.name] = FeatureCache.key(ex, files, max_seconds)
        hit = cache.load(ex.name, keys[ex.name])
        if hit is None:
            todo.append(ex)
            continue
        x, info = hit
        out[ex.name] = x
        for i, reason in info.get("bad", {}).items():
            bad[int(i)] = reason
        log(f"{ex.name}: features from cache ({cache.folder})")
    if bad and not skip_bad:
        i = min(bad)
        raise AudioFileError(f"{bad[i]} (use --skip-bad to skip unreadable files)")
    if todo:
        from tqdm import tqdm

        rates = sorted({ex.sample_rate for ex in todo})
        n = len(dataset.items)
        results: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {ex.name: [] for ex in todo}
        new_bad: dict[int, str] = {}
        t_start = time.time()
        bar = tqdm(total=n, desc="features (" + ", ".join(ex.name for ex in todo) + ")", unit="clip",
                   disable=None if progress else True, leave=False)
        for start in range(0, n, chunk):
            idx = list(range(start, min(n, start + chunk)))
            clips: dict[int, list[np.ndarray]] = {sr: [] for sr in rates}
            good = []
            for i in idx:
                path = dataset.items[i].path
                try:
                    loaded = {sr: load_audio(path, sr) for sr in rates}
                except AudioFileError as err:
                    if not skip_bad:
                        bar.close()
                        raise AudioFileError(f"{err} (use --skip-bad to skip unreadable files)") from None
                    new_bad[i] = str(err)
                    continue
                for sr in rates:
                    x = loaded[sr]
                    if max_seconds is not None:
                        x = x[: max(1, int(round(max_seconds * sr)))]
                    clips[sr].append(x)
                good.append(i)
            if good:
                for ex in todo:
                    feats = np.asarray(ex(clips[ex.sample_rate]), dtype=np.float32)
                    results[ex.name].append((np.asarray(good), feats))
            bar.update(len(idx))
            done, tenth = idx[-1] + 1, max(1, n // 10)
            if bar.disable and progress and (done == n or done // tenth != (done - len(idx)) // tenth):
                names = ", ".join(ex.name for ex in todo)
                log(f"features ({names}): {done}/{n} clips, {time.time() - t_start:.0f} s")
        bar.close()
        bad.update(new_bad)
        for ex in todo:
            parts = results[ex.name]
            dim = parts[0][1].shape[1] if parts else 0
            x = np.full((n, dim), np.nan, dtype=np.float32)
            for rows, feats in parts:
                x[rows] = feats
            if not np.isfinite(x[[i for i in range(n) if i not in bad]]).all():
                raise AudioPGError(f"{ex.name}: non-finite features for some clips (an extractor bug)")
            out[ex.name] = x
            cache.save(ex.name, keys[ex.name], x, {"extractor": ex.key(), "description": ex.description,
                                                   "num_items": n, "bad": {str(k): v for k, v in new_bad.items()},
                                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return out, bad


# ----------------------------------------------------------------------------- the probe
@dataclass
class FoldResult:
    """One outer split: the score (accuracy, mAP or R²), extra metrics and the chosen regularization."""

    split: str
    n_train: int
    n_test: int
    score: float
    param: float  # chosen C (classification) or alpha (regression)
    n_val: int = 0
    extra: dict = field(default_factory=dict)
    y_true: np.ndarray | None = None
    y_pred: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {"split": self.split, "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test,
                "score": self.score, "param": self.param, **self.extra}


@dataclass
class ModelResult:
    name: str
    description: str
    metric: str
    folds: list[FoldResult]
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return mean_std([f.score for f in self.folds])[0]

    @property
    def std(self) -> float:
        return mean_std([f.score for f in self.folds])[1]

    def confusion(self, num_classes: int) -> np.ndarray | None:
        if not self.folds or any(f.y_pred is None or f.y_true is None or f.y_true.ndim != 1 for f in self.folds):
            return None
        return confusion_matrix(np.concatenate([f.y_true for f in self.folds]),
                                np.concatenate([f.y_pred for f in self.folds]), num_classes)

    def to_dict(self) -> dict:
        d = {"description": self.description, "metric": self.metric, "mean": self.mean, "std": self.std,
             "folds": [f.to_dict() for f in self.folds], "notes": list(self.notes)}
        extra_keys = sorted({k for f in self.folds for k in f.extra if isinstance(f.extra[k], (int, float))})
        for k in extra_keys:
            m, s = mean_std([f.extra.get(k) for f in self.folds])
            d[f"{k}_mean"], d[f"{k}_std"] = m, s
        return d


def _map_score(estimator: Any, x: np.ndarray, y: np.ndarray) -> float:
    scores = estimator.predict_proba(x)
    valid = y.sum(axis=0) > 0
    if not valid.any():
        return float("nan")
    return mean_average_precision(y[:, valid], scores[:, valid])[0]


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


def _score(task_type: str, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, dict, np.ndarray | None]:
    """(primary score, extra metrics, predictions kept for the report)."""
    if task_type == SINGLE:
        pred = model.predict(x)
        return accuracy(y, pred), {}, pred
    if task_type == MULTI:
        scores = model.predict_proba(x)
        m, _, n_eval = mean_average_precision(y, scores)
        return m, {"classes_evaluated": n_eval}, None
    pred = model.predict(x)
    return r2_score(y, pred), {"median_abs_error": median_absolute_error(y, pred)}, pred


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
    import contextlib

    with (threadpool_limits(limits=threads) if threads else contextlib.nullcontext()):
        if split.val is not None and len(split.val):
            va = np.asarray(split.val)
            scores = []
            path_model = _pipeline(task_type, grid[0], seed, warm_start=True)
            for p in grid:
                _fit_quiet(_set_param(path_model, task_type, p), x_tr, y_tr, convergence)
                scores.append(_score(task_type, path_model, x[va], y[va])[0])
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
                    per_fold[f, j] = _score(task_type, path_model, x_tr[iva], y_tr[iva])[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                scores = list(np.nanmean(per_fold, axis=0))
            n_val = 0
        scores = [s if np.isfinite(s) else -np.inf for s in scores]
        best = grid[int(np.argmax(scores))]
        model = _fit_quiet(_pipeline(task_type, best, seed), x_tr, y_tr, convergence)
        score, extra, pred = _score(task_type, model, x[te], y[te])
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
) -> ModelResult:
    """Run the probe on every split of ``dataset``'s protocol with ``features`` (one row per item)."""
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
    convergence = [0]
    folds = []
    for sp in splits:
        t0 = time.time()
        fr = fit_probe(features, y, sp, dataset.task_type, groups=groups, seed=seed, convergence=convergence)
        folds.append(fr)
        log(f"{name} {sp.name}: {dataset.metric} {fr.score:.4f} (param {fr.param:g}, {time.time() - t0:.1f} s)")
    notes = []
    if convergence[0]:
        notes.append(f"lbfgs reached max_iter={MAX_ITER} without converging in {convergence[0]} fit(s)")
    return ModelResult(name, description, dataset.metric, folds, notes)


# ----------------------------------------------------------------------------- CPU threads
# ----------------------------------------------------------------------------- the whole run
BASELINES = ("random", "handcrafted")


def parse_baselines(text: str | Sequence[str] | None) -> list[str]:
    """``"random,handcrafted"`` -> ["random", "handcrafted"]; "" or None -> []; unknown names raise."""
    from audiopg.core.errors import ConfigError

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
    layer: int = -1,
    pool: str = "mean",
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
    handcrafted baseline can run.  ``cache_dir``: None = :func:`default_cache_dir`,
    False = no cache.
    """
    from audiopg.eval.report import write_report

    log = log or (lambda msg: None)
    t0 = time.time()
    baselines = list(baselines)
    extractors: list[Any] = []
    options: dict[str, Any] = {"layer": layer, "pool": pool, "seed": seed, "max_seconds": max_seconds,
                               "c_grid": list(C_GRID), "alpha_grid": list(ALPHA_GRID), "max_iter": MAX_ITER}
    wants_encoder = pretrained or "random" in baselines
    if wants_encoder:
        if checkpoint is None:
            raise AudioPGError("--checkpoint is needed for the pretrained model and the random-init baseline "
                               "(or run only --baselines handcrafted --no-pretrained)")
        from audiopg.model.checkpoint import resolve_encoder_path
        from audiopg.model.encoder import Encoder

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
    if "handcrafted" in baselines:
        extractors.append(HandcraftedFeatures())
    if not extractors:
        raise AudioPGError("nothing to evaluate: no pretrained model and no baseline")
    if cache_dir is False:
        cache = FeatureCache(None)
    else:
        cache = FeatureCache(cache_dir if cache_dir is not None else default_cache_dir())
    feats, bad = extract_features(dataset, extractors, cache=cache, skip_bad=skip_bad, max_seconds=max_seconds,
                                  progress=progress, log=log)
    if bad:
        keep = np.array([i not in bad for i in range(len(dataset.items))])
        dataset = dataset.without(bad, bad)
        feats = {k: v[keep] for k, v in feats.items()}
        log(f"skipped {len(bad)} unreadable file(s)")
    t_feat = time.time() - t0
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
        "dataset": dataset.summary(),
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
