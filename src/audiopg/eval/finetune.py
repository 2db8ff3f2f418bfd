"""Fine-tuning a pre-trained encoder on a labelled task (``audiopg finetune``).

The checkpoint's ViT plus a linear head on the mean of its final patch tokens, trained with AdamW, layer-wise
lr decay, the shared warm-up + cosine schedule, mixup, SpecAugment and structured patch masking, one run per
split of the dataset's protocol; the head may start as a linear probe of the frozen encoder (LP-FT).  The
log-mel features of every clip are computed once per run.  Recipes are YAML files in ``recipes/``; the method,
the recipes and the outputs are described in docs/evaluation.md ("Fine-tuning").
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save
from torch import nn
from tqdm import tqdm

from audiopg.audio.fbank import Fbank
from audiopg.audio.io import fit_length, load_audio
from audiopg.core.config import (
    check_range,
    from_dict,
    merge_overrides,
    read_mapping,
    to_dict,
)
from audiopg.core.device import resolve_device
from audiopg.core.errors import AudioFileError, AudioPGError, ConfigError
from audiopg.core.io import (
    append_text,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
)
from audiopg.core.schedule import lr_at
from audiopg.eval.datasets.base import MULTI, REGRESSION, SINGLE, Dataset, Split
from audiopg.eval.metrics import FoldResult, ModelResult, task_score
from audiopg.eval.probe import MAX_ITER, fit_probe
from audiopg.eval.report import write_report
from audiopg.model.checkpoint import resolve_encoder_path, save_encoder
from audiopg.model.encoder import Encoder
from audiopg.model.vit import ViTEncoder

__all__ = [
    "Recipe",
    "RECIPES_DIR",
    "list_recipes",
    "load_recipe",
    "FinetuneModel",
    "ClipFeatures",
    "probe_head",
    "spec_augment",
    "patch_keep_ids",
    "run_finetune",
]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
HEAD_INITS = ("random", "probe")
#: logit given to a class the training part never shows (or, multi-label, always shows) when the head starts
#: as a probe: the probe has no weights for it, and its probability should start near 0 (or 1)
ABSENT_LOGIT = 10.0


# ----------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class Recipe:
    """Fine-tuning settings; validated on construction (ConfigError names the key)."""

    name: str = "custom"  # the recipe's name (a bundled recipe's file stem)
    task: str | None = None  # the task the recipe was written for (informational; a mismatch only warns)
    description: str = ""  # one line for reports
    source: str = ""  # where the numbers come from
    scale: str = "base"  # "base" (GPU), "small" or "tiny" (CPU)
    epochs: int = 10  # passes over the training part of each split
    max_steps: int | None = None  # stop a split after this many optimizer steps (smoke tests)
    batch_size: int = 32  # clips per optimizer step
    lr: float | None = None  # absolute peak lr; None: blr * batch_size / 256
    blr: float = 1e-3  # base lr of the MAE convention (used when lr is None)
    min_lr: float = 1e-6  # lr at the last step (end of the half-cycle cosine)
    warmup_epochs: float = 1.0  # linear warm-up length, in epochs
    weight_decay: float = 0.05  # AdamW decoupled weight decay (not on biases, norms, the CLS token)
    layer_decay: float = 0.75  # layer-wise lr decay: block i gets lr * layer_decay ** (depth + 1 - layer_id)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    grad_clip: float | None = None  # clip the global gradient norm to this; None: no clipping
    drop_path: float = 0.1  # stochastic depth rate of the encoder during fine-tuning
    head_init: str = "random"  # "random": MAE's head init (trunc-normal, std 2e-5); "probe": LP-FT, the head and its
    #                            normalization start as a logistic-regression probe of the frozen encoder (C chosen
    #                            on the training part as the linear probe chooses it)
    mixup: float = 0.0  # mixup of the normalized log-mel crops, lambda ~ Beta(mixup, mixup); 0 disables
    mixup_prob: float = 1.0  # probability that a batch is mixed
    label_smoothing: float = 0.1  # single-label (cross-entropy) only
    specaug_time: int = 0  # max width in frames of each time mask; 0 disables
    specaug_freq: int = 0  # max width in mel bins of each frequency mask; 0 disables
    specaug_masks: int = 1  # masks of each kind per clip
    mask_t_prob: float = 0.0  # fraction of patch time columns dropped from the encoder input (AudioMAE)
    mask_f_prob: float = 0.0  # fraction of patch frequency rows dropped
    clip_frames: int | None = None  # training crop / evaluation window in frames; None = the encoder's window
    eval_hop: float = 0.5  # hop between evaluation windows, as a fraction of a window
    eval_every: int = 1  # epochs between validation passes (splits with a validation part)
    loss: str = "auto"  # auto | ce | bce
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    num_workers: int = 0  # DataLoader worker processes
    cache_audio_gb: float = 2.0  # memory for clips kept as log-mel features (computed once); the rest are read
    #                              from disk and transformed each time they are used
    folds: int | None = None  # run only the first N splits of the protocol
    seed: int = 0  # seeds the head init, the crops, the augmentations, the batches and a random-init encoder

    def __post_init__(self) -> None:
        for key, low in (("epochs", 1), ("batch_size", 1), ("specaug_masks", 0), ("num_workers", 0), ("eval_every", 1)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(key, f"expected an integer >= {low}, got {v!r}")
        for key in ("max_steps", "folds", "clip_frames"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(key, f"expected a positive integer or null, got {v!r}")
        for key in ("specaug_time", "specaug_freq"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(key, f"expected an integer >= 0, got {v!r}")
        if self.lr is not None:
            check_range("lr", self.lr, 0.0)
        check_range("blr", self.blr, 0.0)
        check_range("min_lr", self.min_lr, 0.0)
        check_range("warmup_epochs", self.warmup_epochs, 0.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("layer_decay", self.layer_decay, 0.0, 1.0)
        if self.layer_decay == 0:
            raise ConfigError("layer_decay", "must be in (0, 1]")
        for i, b in enumerate(self.betas):
            check_range(f"betas[{i}]", b, 0.0, 1.0)
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0.0)
        check_range("drop_path", self.drop_path, 0.0, 0.99)
        if self.head_init not in HEAD_INITS:
            raise ConfigError("head_init", f"must be {' or '.join(HEAD_INITS)}, got {self.head_init!r}")
        check_range("mixup", self.mixup, 0.0)
        for key in ("mixup_prob", "label_smoothing", "mask_t_prob", "mask_f_prob"):
            check_range(key, getattr(self, key), 0.0, 1.0)
        for key in ("mask_t_prob", "mask_f_prob"):
            if getattr(self, key) >= 1.0:
                raise ConfigError(key, "must be below 1 (some patches must stay)")
        check_range("eval_hop", self.eval_hop, 0.01, 1.0)
        check_range("cache_audio_gb", self.cache_audio_gb, 0.0)
        if self.loss not in ("auto", "ce", "bce"):
            raise ConfigError("loss", f"must be auto, ce or bce, got {self.loss!r}")
        if self.scale not in ("base", "tiny", "small"):
            raise ConfigError("scale", f"must be base, small or tiny, got {self.scale!r}")

    def peak_lr(self) -> float:
        return float(self.lr) if self.lr is not None else float(self.blr) * self.batch_size / 256.0


def list_recipes() -> list[str]:
    """Names of the bundled recipes (``src/audiopg/eval/recipes/*.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_file: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """A bundled recipe by name (e.g. ``esc50-base``) or a YAML/JSON file, with ``key=value`` overrides."""
    path = Path(name_or_file)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{name_or_file}.yaml"
        if not path.exists():
            raise ConfigError("recipe", f"unknown recipe {str(name_or_file)!r} (bundled: {', '.join(list_recipes())}; "
                                        "or give a YAML file)")
    data = read_mapping(path)
    data.setdefault("name", path.stem)
    if overrides:
        data = merge_overrides(data, list(overrides))
    # YAML 1.1 reads "1e-3" (no dot) as a string; accept it for the numeric fields
    numeric = {f.name for f in dataclasses.fields(Recipe) if "float" in str(f.type) or "int" in str(f.type)}
    for key in numeric & set(data):
        value = data[key]
        if isinstance(value, str):
            try:
                data[key] = float(value) if not value.strip().lstrip("-").isdigit() else int(value)
            except ValueError:
                pass
    return from_dict(Recipe, data)


# ----------------------------------------------------------------------------- model and augmentation
class FinetuneModel(nn.Module):
    """ViT encoder + linear head on the mean of the final normed patch tokens.

    The pooled vector is standardized by a BatchNorm without affine parameters
    before the head (MAE's linear-probing head; the probe's StandardScaler in
    module form).  Without it the head learns very slowly from a briefly
    pre-trained encoder, whose pooled embeddings share a large common offset
    and differ little between clips (measured: std across clips 0.04 against a
    mean magnitude of 0.8 per dimension; fine-tuning stayed near chance).
    """

    def __init__(self, encoder: nn.Module, num_outputs: int):
        super().__init__()
        self.encoder = encoder
        self.head_norm = nn.BatchNorm1d(encoder.embed_dim, affine=False, eps=1e-6)
        self.head = nn.Linear(encoder.embed_dim, num_outputs)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's fine-tuning head init
        nn.init.zeros_(self.head.bias)

    def pooled(self, spec: torch.Tensor, keep_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D): the mean of the final patch tokens, what the head reads (before its normalization)."""
        tokens = self.encoder.forward_features(spec, mask_ids_keep=keep_ids)
        return tokens[:, 1:].mean(dim=1).float()

    def forward(self, spec: torch.Tensor, keep_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.head_norm(self.pooled(spec, keep_ids)))

    def param_groups(self, weight_decay: float, layer_decay: float) -> list[dict]:
        groups = self.encoder.param_groups(weight_decay, layer_decay)
        for g in groups:  # name parameters as in this module's state dict
            g["param_names"] = [f"encoder.{n}" for n in g["param_names"]]
        groups.append({"params": [self.head.weight], "param_names": ["head.weight"], "weight_decay": weight_decay,
                       "lr_scale": 1.0, "layer_id": self.encoder.depth + 1})
        groups.append({"params": [self.head.bias], "param_names": ["head.bias"], "weight_decay": 0.0,
                       "lr_scale": 1.0, "layer_id": self.encoder.depth + 1})
        return groups


def probe_head(model: FinetuneModel, feats: np.ndarray, y: np.ndarray, split: Split, *, groups: np.ndarray,
               multi: bool, seed: int) -> dict:
    """LP-FT: make the head a linear probe of the frozen encoder; returns {"C", "train_score"}.

    ``feats``: pooled features (:meth:`FinetuneModel.pooled`, eval mode), one row per evaluation window of the
    clips in ``split.train`` (and ``split.val``), which index its rows; ``y`` the windows' targets (class
    indices, or indicator rows when ``multi``: one binary probe per class, as the BCE head reads them).  C is
    chosen by :func:`~audiopg.eval.probe.fit_probe` (validation rows, or an inner CV grouped by ``groups``);
    ``train_score`` is that probe's score on the training rows.  Then the head's normalization takes the
    training rows' mean and variance, and the head the weights of a logistic regression with that C fitted on
    the rows so normalized: before any fine-tuning step the model in eval mode predicts what the probe does.
    """
    from sklearn.linear_model import LogisticRegression

    choice = fit_probe(feats, y, split, MULTI if multi else SINGLE, groups=groups, seed=seed, keep_predictions=False)
    tr = np.asarray(split.train)
    x = feats[tr].astype(np.float64)
    mean, var = x.mean(axis=0), x.var(axis=0)
    z = (x - mean) / np.sqrt(var + model.head_norm.eps)
    k = model.head.out_features
    weight, bias = np.zeros((k, z.shape[1])), np.zeros(k)

    def fit(target: np.ndarray) -> Any:
        return LogisticRegression(C=choice.param, solver="lbfgs", max_iter=MAX_ITER, random_state=seed).fit(z, target)

    if multi:  # one binary probe per class
        for c in range(k):
            col = y[tr, c]
            if col.min() == col.max():
                bias[c] = ABSENT_LOGIT if col.min() > 0 else -ABSENT_LOGIT
                continue
            lr = fit(col)
            weight[c], bias[c] = lr.coef_[0], lr.intercept_[0]
    else:
        lr = fit(y[tr])
        classes = lr.classes_.astype(int)
        if len(classes) == 2:  # binary: one logit w.x + b, split evenly between the two softmax outputs
            coef, icpt = np.stack([-lr.coef_[0], lr.coef_[0]]) / 2, np.array([-lr.intercept_[0], lr.intercept_[0]]) / 2
        else:
            coef, icpt = lr.coef_, lr.intercept_
        bias[:] = icpt.min() - ABSENT_LOGIT
        weight[classes], bias[classes] = coef, icpt
    with torch.no_grad():
        model.head_norm.running_mean.copy_(torch.from_numpy(mean))
        model.head_norm.running_var.copy_(torch.from_numpy(var))
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    return {"C": float(choice.param), "train_score": float(choice.score)}


def spec_augment(spec: torch.Tensor, max_time: int, max_freq: int, masks: int,
                 generator: torch.Generator) -> torch.Tensor:
    """SpecAugment on (B, T, F): per clip ``masks`` time masks of width U[0, max_time] and frequency masks of
    width U[0, max_freq], filled with 0 (the mean of normalized features).  Returns a new tensor."""
    if masks == 0 or (max_time == 0 and max_freq == 0):
        return spec
    b, t, f = spec.shape
    keep = torch.ones(b, t, f, dtype=torch.bool)
    for _ in range(masks):
        for axis, limit, size in ((1, max_time, t), (2, max_freq, f)):
            if limit <= 0:
                continue
            width = torch.randint(0, min(limit, size) + 1, (b,), generator=generator)
            start = (torch.rand(b, generator=generator) * (size - width + 1).float()).long()
            pos = torch.arange(size)[None, :]
            band = (pos >= start[:, None]) & (pos < (start + width)[:, None])  # (B, size)
            keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
    return spec * keep.to(spec.device, spec.dtype)


def patch_keep_ids(b: int, grid_t: int, grid_f: int, t_prob: float, f_prob: float,
                   generator: torch.Generator) -> torch.Tensor | None:
    """AudioMAE-style structured masking: drop ``round(t_prob * grid_t)`` random time columns and
    ``round(f_prob * grid_f)`` frequency rows of patches per clip; returns (B, K) kept token ids (time-major)."""
    nt = min(grid_t - 1, int(round(t_prob * grid_t)))
    nf = min(grid_f - 1, int(round(f_prob * grid_f)))
    if nt <= 0 and nf <= 0:
        return None
    rows = []
    for _ in range(b):
        cols = torch.sort(torch.randperm(grid_t, generator=generator)[: grid_t - nt]).values
        fr = torch.sort(torch.randperm(grid_f, generator=generator)[: grid_f - nf]).values
        rows.append((cols[:, None] * grid_f + fr[None, :]).reshape(-1))
    return torch.stack(rows)


# ----------------------------------------------------------------------------- data
class ClipFeatures:
    """The normalized log-mel of every clip, as the checkpoint preprocesses audio, computed once per run.

    A clip is peak-normalized when the checkpoint's world was, padded with the noise floor to at least
    ``min_samples`` (one window), turned into Kaldi log-mel on the CPU and normalized with the checkpoint's
    statistics.  ``cache`` holds the clips kept in memory; ``clips[i]`` of any other clip reads and transforms
    it again.  Crops and windows are cut from these whole-clip features (frame-aligned, so a window equals the
    log-mel of the same stretch of waveform).
    """

    def __init__(self, encoder: Encoder, paths: Sequence[Path], min_samples: int):
        self.fbank = Fbank(encoder.fbank_config)
        self.stats = encoder.fbank_stats
        self.sample_rate = encoder.sample_rate
        self.peak = encoder.peak_normalize
        self.noise = encoder.pad_noise_level
        self.paths = list(paths)
        self.min_samples = min_samples
        self.cache: dict[int, torch.Tensor] = {}

    def transform(self, wave: np.ndarray) -> torch.Tensor:
        """(frames, mel bins) normalized log-mel of one decoded clip."""
        if self.peak:
            m = float(np.max(np.abs(wave))) if wave.size else 0.0
            if m > 0:
                wave = wave / m
        if wave.shape[0] < self.min_samples:
            wave = fit_length(wave, self.min_samples, noise_level=self.noise)
        with torch.no_grad():
            return self.stats.normalize(self.fbank(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        spec = self.cache.get(i)
        return spec if spec is not None else self.transform(load_audio(self.paths[i], self.sample_rate))


def _read_features(dataset: Dataset, encoder: Encoder, min_samples: int, skip_bad: bool, budget_gb: float,
                   log: Callable[[str], None], progress: bool) -> tuple[ClipFeatures, dict[int, str]]:
    """Read and transform every clip once: bad files raise (or are collected with skip_bad); features are kept
    in memory while they fit in ``budget_gb``.  The returned features are indexed like ``dataset`` without the
    bad files."""
    feats = ClipFeatures(encoder, [], min_samples)
    specs: dict[int, torch.Tensor] = {}
    bad: dict[int, str] = {}
    used = 0.0
    for i, it in enumerate(tqdm(dataset.items, desc="log-mel features", unit="clip",
                                disable=None if progress else True, leave=False)):
        try:
            wave = load_audio(it.path, encoder.sample_rate)
        except AudioFileError as err:
            if not skip_bad:
                raise AudioFileError(f"{err} (use --skip-bad to skip unreadable files)") from None
            bad[i] = str(err)
            continue
        spec = feats.transform(wave)
        size = spec.numel() * spec.element_size() / 1e9
        if used + size <= budget_gb:
            specs[i] = spec
            used += size
    kept = [i for i in range(len(dataset.items)) if i not in bad]
    feats.paths = [dataset.items[i].path for i in kept]
    feats.cache = {k: specs[i] for k, i in enumerate(kept) if i in specs}
    if len(feats.cache) < len(kept):
        log(f"feature cache: {len(feats.cache)} of {len(kept)} clips in memory ({used:.2f} GB); the rest are read "
            "and transformed every time they are used")
    return feats, bad


class _Crops(torch.utils.data.Dataset):
    """Training examples: a random crop of ``frames`` frames of a clip's features, drawn from (seed, epoch, clip)."""

    def __init__(self, feats: ClipFeatures, targets: np.ndarray, index: np.ndarray, frames: int, seed: int):
        self.feats, self.targets, self.index, self.frames, self.seed = feats, targets, index, frames, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(self.index[k])
        spec = self.feats[i]
        if spec.shape[0] > self.frames:
            start = int(np.random.default_rng((self.seed, self.epoch, i)).integers(0, spec.shape[0] - self.frames + 1))
            spec = spec[start:start + self.frames]
        return spec, torch.as_tensor(self.targets[i])


def _windows(n: int, win: int, hop: int) -> list[int]:
    if n <= win:
        return [0]
    starts = list(range(0, n - win + 1, hop))
    if starts[-1] != n - win:
        starts.append(n - win)
    return starts


def _over_windows(fn: Callable[[torch.Tensor], torch.Tensor], feats: ClipFeatures, index: np.ndarray, frames: int,
                  hop: int, device: torch.device, amp: bool, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``fn`` applied to every evaluation window of the clips in ``index`` (``frames`` long, every ``hop`` frames
    plus one aligned with the end), in batches: (outputs, one row per window; owners, the position in ``index``
    of each window's clip)."""
    outs: list[np.ndarray] = []
    owners: list[int] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            x = torch.stack(pending).to(device)
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                outs.append(fn(x).float().cpu().numpy())
            pending.clear()

    for k, i in enumerate(index):
        spec = feats[int(i)]
        for s in _windows(spec.shape[0], frames, hop):
            pending.append(spec[s:s + frames])
            owners.append(k)
            if len(pending) >= batch:
                flush()
    flush()
    return np.concatenate(outs), np.asarray(owners)


def _evaluate(model: FinetuneModel, feats: ClipFeatures, index: np.ndarray, frames: int, hop_frames: int,
              multi: bool, device: torch.device, amp: bool, batch: int) -> np.ndarray:
    """What :func:`task_score` scores, per clip: the mean of its windows' probabilities, (len(index), C), for a
    multi-label task; the class with the highest mean probability, (len(index),), for a single-label one."""
    model.eval()
    logits, owners = _over_windows(model, feats, index, frames, hop_frames, device, amp, batch)
    t = torch.from_numpy(logits)
    p = (torch.sigmoid(t) if multi else torch.softmax(t, dim=-1)).numpy().astype(np.float64)
    sums = np.zeros((len(index), p.shape[1]))
    np.add.at(sums, owners, p)
    probs = sums / np.bincount(owners, minlength=len(index))[:, None]
    return probs if multi else probs.argmax(axis=1)


# ----------------------------------------------------------------------------- the run
def _save_model(path: Path, model: FinetuneModel, meta: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata={"audiopg_finetune": json.dumps(meta)}))


def _append_jsonl(path: Path, record: dict) -> None:
    append_text(path, json.dumps(record) + "\n")


@dataclass
class _Context:
    """What every variant and split of one run shares."""

    dataset: Dataset
    recipe: Recipe
    feats: ClipFeatures
    device: torch.device
    amp: bool
    frames: int
    hop_frames: int
    multi: bool
    use_bce: bool
    out: Path
    write: bool
    progress: bool
    log: Callable[[str], None]
    t0: float


def _init_head_from_probe(ctx: _Context, model: FinetuneModel, sp: Split, y: np.ndarray) -> dict:
    """:func:`probe_head` on the evaluation windows of the split's training (and validation) clips."""
    ds = ctx.dataset
    clips = np.concatenate([np.asarray(sp.train)] + ([] if sp.val is None else [np.asarray(sp.val)]))
    model.eval()
    x, owners = _over_windows(model.pooled, ctx.feats, clips, ctx.frames, ctx.hop_frames, ctx.device, ctx.amp,
                              ctx.recipe.batch_size)
    clip_of = clips[owners]
    rows = np.arange(len(owners))
    in_train = owners < len(sp.train)
    # windows of one clip stay together in the inner CV; so do a group's clips when the protocol groups
    grouped = ds.protocol.inner_grouped
    groups = np.array([ds.items[i].group if grouped and ds.items[i].group is not None else f"#{i}" for i in clip_of])
    split = Split(sp.name, rows[in_train], rows[in_train], None if sp.val is None else rows[~in_train])
    return probe_head(model, x, y[clip_of], split, groups=groups, multi=ctx.use_bce, seed=ctx.recipe.seed)


def _train_split(ctx: _Context, enc: Encoder, sp: Split, tag: str, reinit: bool) -> FoldResult:
    """Fine-tune one split; returns its FoldResult and writes its checkpoint and metrics lines."""
    ds, recipe, dev, amp = ctx.dataset, ctx.recipe, ctx.device, ctx.amp
    metrics_path = ctx.out / "metrics.jsonl"
    y_all = ds.targets()
    if ctx.use_bce and not ctx.multi:
        y_train = np.eye(ds.num_classes, dtype=np.float32)[y_all]
    else:
        y_train = y_all.astype(np.float32) if ctx.multi else y_all
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    vit = ViTEncoder(dataclasses.replace(enc.config, drop_path=recipe.drop_path))
    vit.load_state_dict(enc.model.state_dict())
    model = FinetuneModel(vit, ds.num_classes).to(dev)
    extra: dict[str, Any] = {}
    if recipe.head_init == "probe":
        extra["probe_head"] = _init_head_from_probe(ctx, model, sp, y_train)
        ctx.log(f"{tag} {sp.name}: head starts as a linear probe (C {extra['probe_head']['C']:g}, training "
                f"{ds.metric} {extra['probe_head']['train_score']:.4f})")
        if ctx.write:
            _append_jsonl(metrics_path, {"split": sp.name, "model": tag, "event": "probe_head", **extra["probe_head"]})
    groups = model.param_groups(recipe.weight_decay, recipe.layer_decay)
    for g in groups:
        g.pop("param_names", None)
    peak = recipe.peak_lr()
    opt = torch.optim.AdamW(groups, lr=peak, betas=tuple(recipe.betas))
    crops = _Crops(ctx.feats, y_train, np.asarray(sp.train), ctx.frames, recipe.seed)
    loader = torch.utils.data.DataLoader(
        crops, batch_size=recipe.batch_size, shuffle=True, drop_last=len(crops) > recipe.batch_size,
        num_workers=recipe.num_workers, generator=torch.Generator().manual_seed(recipe.seed),
        pin_memory=dev.type == "cuda")
    steps_per_epoch = max(1, len(loader))
    total = recipe.epochs * steps_per_epoch
    if recipe.max_steps is not None:
        total = min(total, recipe.max_steps)
    warmup = min(total, int(round(recipe.warmup_epochs * steps_per_epoch)))
    grid_t, grid_f = ctx.frames // enc.config.patch_t, enc.config.grid_f
    best_score, best_state, best_epoch = -math.inf, None, None
    step = epoch = 0
    ctx.log(f"{tag} {sp.name}: {len(sp.train)} train / {0 if sp.val is None else len(sp.val)} val / {len(sp.test)} "
            f"test clips, {total} steps, peak lr {peak:.3g}, device {dev}")
    while step < total:
        crops.epoch = epoch
        model.train()
        losses: list[float] = []
        bar = tqdm(loader, desc=f"{tag} {sp.name} epoch {epoch + 1}/{recipe.epochs}", leave=False,
                   disable=None if ctx.progress else True)
        for spec, target in bar:
            if step >= total:
                break
            lr = lr_at(step, peak, recipe.min_lr, warmup, total)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            spec = spec.to(dev, non_blocking=True)
            b = spec.shape[0]
            if ctx.use_bce:
                tgt = target.to(dev).float()
            else:
                tgt = F.one_hot(target.to(dev).long(), ds.num_classes).float()
                tgt = tgt * (1 - recipe.label_smoothing) + recipe.label_smoothing / ds.num_classes
            if recipe.mixup > 0 and b > 1 and float(torch.rand(1, generator=gen)) < recipe.mixup_prob:
                lam = float(np.random.default_rng((recipe.seed, step)).beta(recipe.mixup, recipe.mixup))
                perm = torch.randperm(b, generator=gen).to(dev)
                spec = lam * spec + (1 - lam) * spec[perm]
                tgt = lam * tgt + (1 - lam) * tgt[perm]
            spec = spec_augment(spec, recipe.specaug_time, recipe.specaug_freq, recipe.specaug_masks, gen)
            keep = patch_keep_ids(b, grid_t, grid_f, recipe.mask_t_prob, recipe.mask_f_prob, gen)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(spec, None if keep is None else keep.to(dev)).float()
            if ctx.use_bce:
                loss = F.binary_cross_entropy_with_logits(logits, tgt)
            else:
                loss = -(tgt * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
            if not torch.isfinite(loss):
                raise AudioPGError(f"{tag} {sp.name}: the loss became {float(loss)} at step {step + 1} "
                                   f"(lr {lr:.3g}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            if ctx.write:
                _append_jsonl(metrics_path, {"split": sp.name, "model": tag, "epoch": epoch + 1, "step": step,
                                             "lr": lr, "loss": losses[-1]})
        bar.close()
        epoch += 1
        record: dict[str, Any] = {"split": sp.name, "model": tag, "epoch": epoch, "step": step,
                                  "train_loss": float(np.mean(losses)) if losses else None,
                                  "time_s": round(time.time() - ctx.t0, 2)}
        if sp.val is not None and (epoch % recipe.eval_every == 0 or step >= total):
            output = _evaluate(model, ctx.feats, np.asarray(sp.val), ctx.frames, ctx.hop_frames, ctx.multi, dev, amp,
                               recipe.batch_size)
            val_score = task_score(ds.task_type, y_all[np.asarray(sp.val)], output)[0]
            record[f"val_{ds.metric}"] = val_score
            if val_score > best_score:
                best_score, best_epoch = val_score, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ctx.log(f"{tag} {sp.name} epoch {epoch}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float) and k != "time_s"))
        if ctx.write:
            _append_jsonl(metrics_path, record)
    if best_state is not None:
        model.load_state_dict(best_state)
    test = np.asarray(sp.test)
    output = _evaluate(model, ctx.feats, test, ctx.frames, ctx.hop_frames, ctx.multi, dev, amp, recipe.batch_size)
    score, metrics, pred = task_score(ds.task_type, y_all[test], output)
    chosen_epoch = best_epoch if best_state is not None else epoch
    chosen = f"epoch {chosen_epoch} (best on validation)" if best_state is not None else f"epoch {epoch} (last)"
    ctx.log(f"{tag} {sp.name}: test {ds.metric} {score:.4f} with the model of {chosen}")
    if ctx.write:
        _append_jsonl(metrics_path, {"split": sp.name, "model": tag, "event": "test", "epoch": chosen_epoch,
                                     f"test_{ds.metric}": score, "chosen": chosen})
        meta = {"task": ds.name, "split": sp.name, "classes": ds.classes, "multi_label": ctx.multi,
                "recipe": to_dict(recipe), "test_score": score, "metric": ds.metric, "chosen": chosen,
                "reinit": reinit, "clip_frames": ctx.frames, "encoder_metadata": enc.metadata}
        folder = ctx.out / (f"random-{sp.name}" if reinit else sp.name)
        _save_model(folder / "model.safetensors", model, meta)
        enc_meta = {**enc.metadata, "finetune": {k: meta[k] for k in ("task", "split", "test_score", "metric",
                                                                        "chosen", "reinit")}}
        save_encoder(folder / "encoder.safetensors", model.encoder.state_dict(), enc_meta)
    return FoldResult(sp.name, len(sp.train), len(sp.test), float(score), float("nan"),
                      0 if sp.val is None else len(sp.val), {**metrics, **extra, "epoch": chosen_epoch, "steps": step},
                      y_all[test] if pred is not None else None, pred)


def run_finetune(
    dataset: Dataset,
    checkpoint: str | os.PathLike,
    recipe: Recipe,
    out_dir: str | os.PathLike,
    *,
    device: str = "auto",
    skip_bad: bool = False,
    baselines: Sequence[str] = (),
    pretrained: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    write: bool = True,
) -> dict:
    """Fine-tune on every split of ``dataset``'s protocol; write checkpoints, metrics.jsonl and the report.

    ``baselines=("random",)`` also fine-tunes a randomly initialized encoder of
    the same architecture with the same recipe.  Returns the results dict.
    """
    log = log or (lambda msg: None)
    unknown = [b for b in baselines if b != "random"]
    if unknown:
        raise ConfigError("baselines", f"finetune knows the baseline 'random' only, got {unknown[0]!r}")
    variants = ([("finetuned", False)] if pretrained else []) + ([("random", True)] if "random" in baselines else [])
    if not variants:
        raise AudioPGError("nothing to fine-tune: no pretrained model and no baseline")
    if dataset.task_type == REGRESSION:
        raise AudioPGError("finetune handles classification tasks (single- or multi-label); use probe for a "
                           "continuous target")
    if recipe.task and recipe.task != dataset.name:
        log(f"warning: recipe {recipe.name!r} was written for task {recipe.task!r}; running it on {dataset.name!r}")
    multi = dataset.task_type == MULTI
    if recipe.loss == "ce" and multi:
        raise ConfigError("loss", "cross-entropy needs single-label targets; multi-label tasks use bce")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    dev = resolve_device(device)
    base = Encoder.from_pretrained(checkpoint, device="cpu")
    p = base.config.patch_t
    frames = recipe.clip_frames or base.window_frames
    if frames % p:
        raise ConfigError("clip_frames", f"{frames} is not a multiple of the patch length, {p} frames")
    min_samples = (frames - 1) * base.fbank_config.window_shift + base.fbank_config.window_length
    feats, bad = _read_features(dataset, base, min_samples, skip_bad, recipe.cache_audio_gb, log, progress)
    if bad:
        dataset = dataset.without(bad, bad)
        log(f"skipped {len(bad)} unreadable file(s)")
    ctx = _Context(dataset, recipe, feats, dev, bool(recipe.amp and dev.type == "cuda"), frames,
                   max(p, int(round(recipe.eval_hop * frames / p)) * p), multi, multi or recipe.loss == "bce", out,
                   write, progress, log, t0)
    splits = dataset.splits()
    if recipe.folds is not None:
        splits = splits[: recipe.folds]
    if write:
        atomic_write_text(out / "metrics.jsonl", "")
        atomic_write_text(out / "recipe.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False))
    models: dict[str, ModelResult] = {}
    for tag, reinit in variants:
        enc = Encoder.from_pretrained(checkpoint, device="cpu", reinit=True, seed=recipe.seed) if reinit else base
        folds = [_train_split(ctx, enc, sp, tag, reinit) for sp in splits]
        models[tag] = ModelResult(
            tag, f"{'random-init' if reinit else 'pretrained'} encoder fine-tuned with recipe {recipe.name!r} "
                 f"({frames}-frame crops, peak lr {recipe.peak_lr():.3g}, {recipe.epochs} epochs"
                 + (", head started as a linear probe" if recipe.head_init == "probe" else "") + ")",
            dataset.metric, folds)
    results = {
        "command": "finetune",
        "title": f"Fine-tuning: {dataset.name}" + (f" ({dataset.protocol.name})" if dataset.name == "fsdd" else ""),
        "dataset": dataset.summary(),
        "recipe": to_dict(recipe),
        "options": {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(resolve_encoder_path(checkpoint)),
                    "device": str(dev), "amp": ctx.amp, "clip_frames": frames},
        "selection": ("the epoch with the best validation score is tested" if any(s.val is not None for s in splits)
                      else "the last epoch is tested (no validation split)"),
        "splits": [{"name": sp.name, "n_train": len(sp.train), "n_val": 0 if sp.val is None else len(sp.val),
                    "n_test": len(sp.test)} for sp in splits],
        "models": {name: m.to_dict() for name, m in models.items()},
        "runtime_s": time.time() - t0,
    }
    for m in results["models"].values():
        for f in m["folds"]:
            f.pop("param", None)
    confusions = {}
    if dataset.task_type == SINGLE:
        confusions = {name: m.confusion(dataset.num_classes) for name, m in models.items()}
    if write:
        write_report(out, results, confusions)
    return results
