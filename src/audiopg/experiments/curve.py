"""Transfer curve: what pre-training buys as its budget grows, per recipe.

Pre-train at several wall-clock budgets and at the step counts a reference recipe reached in them, probe every
encoder (against random init and handcrafted features), fine-tune at the largest budget (against the same
network from random init), and tabulate.  docs/experiments.md ("Transfer curve") has the details.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from audiopg.core.config import to_dict
from audiopg.core.errors import AudioPGError, ConfigError
from audiopg.core.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_own_folder,
    is_temp,
)
from audiopg.eval.datasets import default_data_root
from audiopg.eval.finetune import load_recipe
from audiopg.eval.report import format_score
from audiopg.experiments.transfer import (
    FINETUNE_RECIPES,
    HANDCRAFTED,
    PROBE_SEED,
    build_run_config,
    check_existing_run,
    finetune_run,
    json_default,
    load_tasks,
    parse_tasks,
    probe_run,
    seed_stats,
    train_run,
)
from audiopg.model.encoder import Encoder, parse_layer
from audiopg.model.vit import ViTEncoder

__all__ = [
    "PAPER",
    "CurveRecipe",
    "Point",
    "parse_recipe",
    "run_curve",
    "format_table",
    "format_markdown",
    "plot_curve",
    "write_summary",
]

FORMAT = 1
SUMMARY_JSON = "curve.json"
SUMMARY_MD = "curve.md"
SUMMARY_PNG = "curve.png"
RANDOM = "random"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# pre-training keys the curve sets itself (budget, seed, model preset)
RESERVED = ("seed", "steps", "minutes", "model", "model.preset")


# ----------------------------------------------------------------------------- recipes and points
@dataclass(frozen=True)
class CurveRecipe:
    """One line of the curve: pre-training ``--set`` overrides and the probe's pooling, under a name."""

    name: str
    overrides: tuple[str, ...] = ()  # pre-training overrides of every run of the recipe
    layer: int | str | None = None  # the probe's encoder layer (None: what the recipe's runs record)
    pool: str | None = None  # the probe's pooling (None: what the recipe's runs record as their embedding)

    def describe(self) -> str:
        text = " ".join(f"`{o}`" for o in self.overrides) or "the default pre-training"
        layer = "the runs' recorded" if self.layer is None else self.layer
        pool = self.pool or "the runs' recorded"
        return text + f"; probe: layer {layer}, {pool} pooling"


# pre-training keys that change what is learned but not the random-init network, its pooling or its preprocessing
OBJECTIVE_KEYS = ("objective", "masks_per_clip", "factor_loss_weight", "ema_decay", "latent_target_layers",
                  "utterance_loss_weight", "lr", "min_lr", "batch_size", "warmup_fraction", "weight_decay")


def _same_random_init(a: CurveRecipe, b: CurveRecipe) -> bool:
    """True when two recipes' random-init references are the same network, pooling and preprocessing."""
    def rest(r: CurveRecipe) -> set[str]:
        return {o for o in r.overrides if o.split("=", 1)[0] not in OBJECTIVE_KEYS}
    return (a.layer, a.pool) == (b.layer, b.pool) and rest(a) == rest(b)


PAPER = CurveRecipe("paper")  # the default pre-training (paper world), probed the way its runs embed


def _check_key(key: str, where: str) -> None:
    if key in RESERVED:
        raise ConfigError(key, f"{where}: is set by the curve itself (--budgets/--steps, --seeds, --model-preset)")


def parse_recipe(text: str) -> CurveRecipe:
    """``"NAME KEY=VALUE ..."`` (shell-style quoting): pre-training overrides, and ``probe.layer=...`` /
    ``probe.pool=...`` for the probe, e.g. ``"latent objective=latent masks_per_clip=4 probe.pool=meanstd"``."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise ConfigError("recipe", f"{text!r}: {err}") from None
    if not words:
        raise ConfigError("recipe", "empty recipe")
    name, overrides, layer, pool = words[0], [], None, None
    if not NAME_PATTERN.fullmatch(name) or name in (HANDCRAFTED, RANDOM):
        raise ConfigError("recipe", f"{name!r} is not a usable recipe name (letters, digits, . _ + -; not "
                                    f"{HANDCRAFTED!r} or {RANDOM!r})")
    for word in words[1:]:
        key, sep, value = word.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("recipe", f"{name}: expected KEY=VALUE, got {word!r}")
        if key == "probe.pool":
            pool = value
        elif key == "probe.layer":
            try:
                layer = parse_layer(value)
            except ValueError as err:
                raise ConfigError(key, f"recipe {name}: {err}") from None
        elif key.startswith("probe."):
            raise ConfigError(key, f"{name}: unknown probe setting (probe.layer, probe.pool)")
        else:
            _check_key(key, f"recipe {name}")
            overrides.append(word)
    return CurveRecipe(name, tuple(overrides), layer, pool)


@dataclass(frozen=True)
class Point:
    """One budget of a recipe's runs: ``minutes`` of wall clock, or ``steps`` optimizer steps; ``matched``: the
    reference's budget (minutes) whose step count a step-matched point copies."""

    minutes: float | None = None
    steps: int | None = None
    matched: float | None = None

    @property
    def name(self) -> str:
        """The run folder's name: ``min5``, ``steps612``."""
        return f"min{self.minutes:g}" if self.minutes is not None else f"steps{self.steps}"


def _label(row: dict, reference: str) -> str:
    if row["minutes"] is not None:
        return f"{row['minutes']:g} min"
    if row["matched"] is not None:
        return f"{row['nominal_steps']} steps ({reference} at {row['matched']:g} min)"
    return f"{row['nominal_steps']} steps"


def _check_pooling(recipe: CurveRecipe, config) -> None:
    """ConfigError unless the recipe's probe layer and pooling exist for its model (checked on a random init)."""
    cfg = config.model_config()
    meta = {"fbank": to_dict(config.fbank_config(cfg)), "fbank_stats": {"mean": 0.0, "std": 1.0}, "world": {}}
    enc = Encoder(ViTEncoder(cfg), meta)
    try:
        enc.check_layer_pool(recipe.layer, recipe.pool)
    except ValueError as err:
        key = "probe.pool" if "pool" in str(err) else "probe.layer"
        raise ConfigError(key, f"recipe {recipe.name}: {err}") from None


# ----------------------------------------------------------------------------- the curve
def _in_curve(path: Path) -> bool:
    """What a curve folder holds: its summaries, the handcrafted probes, ``RECIPE/POINT/...`` folders."""
    if path.name in (SUMMARY_JSON, SUMMARY_MD, SUMMARY_PNG, HANDCRAFTED):
        return True
    return path.is_dir() and all(p.is_dir() or is_temp(p) for p in path.iterdir())


def run_curve(
    out_dir: str | os.PathLike,
    *,
    recipes: Sequence[CurveRecipe] = (PAPER,),
    budgets: Sequence[float] = (5, 10, 20, 30),
    steps: Sequence[int] | None = None,
    steps_of: str | None = "paper",
    seeds: int = 1,
    largest_seeds: int = 2,
    tasks: Sequence[str] | None = None,
    finetune: bool = True,
    finetune_overrides: Sequence[str] = (),
    overrides: Sequence[str] = (),
    model_preset: str = "tiny",
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    probe_batch_size: int = 32,
    cache_dir: str | os.PathLike | None | bool = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Pre-train, probe and fine-tune every recipe along the budgets; write the summary after every run; return it.

    ``budgets``: wall-clock minutes of the timed runs.  ``steps``: explicit step counts (for every recipe);
    without them, every recipe other than ``steps_of`` is also pre-trained for the step count the ``steps_of``
    recipe's seed-0 run reached at each budget (``steps_of=None``: no step-matched runs).  Seeds 0..seeds-1
    everywhere, max(seeds, largest_seeds) at the largest budget (and the largest explicit step count).
    Fine-tuning (``finetune``): the runs of the largest budget (else of the largest step count), on the tasks of
    :data:`~audiopg.experiments.transfer.FINETUNE_RECIPES`, with ``finetune_overrides`` on those recipes and the
    run's seed.  ``steps_of`` (when it is a recipe; else the first recipe) is the reference of the seed-paired
    differences.
    Raises :class:`~audiopg.experiments.transfer.RunInterrupted` when a run is stopped by a signal.
    """

    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out_dir)
    recipes = list(recipes)
    names = [r.name for r in recipes]
    if not recipes:
        raise ConfigError("recipes", "no recipe to train")
    if len(set(names)) != len(names):
        raise ConfigError("recipes", "a recipe is listed twice")
    for key, n in (("seeds", seeds), ("largest_seeds", largest_seeds)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(key, f"must be a positive integer, got {n!r}")
    budgets = sorted({float(b) for b in budgets})
    if any(not b > 0 for b in budgets):
        raise ConfigError("budgets", f"every budget must be > 0 minutes, got {budgets}")
    step_list = sorted({int(s) for s in steps}) if steps else []
    if any(s < 1 for s in step_list):
        raise ConfigError("steps", f"every step count must be >= 1, got {step_list}")
    if not budgets and not step_list:
        raise ConfigError("budgets", "no budget: give minutes (budgets) or step counts (steps)")
    wants_matching = steps_of is not None and not step_list and bool(budgets)
    if wants_matching and steps_of not in names:
        raise ConfigError("steps_of", f"{steps_of!r} is not among the recipes ({', '.join(names)})")
    matching = wants_matching and len(recipes) > 1
    reference = steps_of if steps_of in names else names[0]
    recipes.sort(key=lambda r: r.name != reference)  # the reference first: its step counts are needed first
    for text in overrides:
        _check_key(text.split("=", 1)[0].strip(), "--set")
    tasks = parse_tasks(tasks)
    data_root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    ft_overrides = list(finetune_overrides)
    for text in ft_overrides:
        if text.split("=", 1)[0].strip() == "seed":
            raise ConfigError("seed", "the fine-tuning seed is each run's own seed")
    ft_recipes = {t: load_recipe(name, ft_overrides) for t, name in FINETUNE_RECIPES.items() if finetune and t in tasks}

    largest_min = budgets[-1] if budgets else None
    largest_steps = step_list[-1] if step_list else None
    ft_point = Point(minutes=largest_min) if budgets else Point(steps=largest_steps)
    stages = [(Point(minutes=b), b == largest_min) for b in budgets] + [(Point(steps=s), s == largest_steps)
                                                                        for s in step_list]

    def config_of(recipe: CurveRecipe, point: Point, seed: int):
        return build_run_config(list(overrides) + list(recipe.overrides), seed, model_preset=model_preset,
                                minutes=point.minutes, steps=point.steps, device=device, progress=progress)

    # a recipe that names no layer or pooling probes the way its runs embed by default (PretrainConfig.embedding_*)
    def resolved(r: CurveRecipe) -> CurveRecipe:
        config = config_of(r, Point(steps=1), 0)
        return replace(r, layer=config.embedding_layer if r.layer is None else r.layer,
                       pool=config.embedding_pool if r.pool is None else r.pool)
    recipes = [resolved(r) for r in recipes]

    # check everything before the first run: the folder, every config, every pooling, the runs already in it
    check_own_folder(out, _in_curve, "a transfer-curve folder")
    for r in recipes:
        _check_pooling(r, config_of(r, Point(steps=1), 0))
        for point, largest in stages:
            for k in range(max(seeds, largest_seeds) if largest else seeds):
                check_existing_run(config_of(r, point, k), out / r.name / point.name / f"seed{k}")

    datasets, task_info = load_tasks(data_root, tasks, log)
    n_seeds = {p.name: max(seeds, largest_seeds) if largest else seeds for p, largest in stages}
    n_timed = sum(n_seeds[p.name] for p, _ in stages if p.minutes is not None) * len(recipes)
    n_steps = sum(n_seeds[p.name] for p, _ in stages if p.minutes is None) * len(recipes)
    n_matched = sum(n_seeds[p.name] for p, _ in stages if p.minutes is not None) * (len(recipes) - 1) if matching else 0
    minutes = sum(p.minutes * n_seeds[p.name] for p, _ in stages if p.minutes is not None) * len(recipes)
    ft_tasks = [t for t in ft_recipes if t in datasets]
    log(f"transfer curve: {len(recipes)} recipe(s); {n_timed} timed runs ({minutes:g} min of pre-training), "
        f"{n_matched} step-matched and {n_steps} fixed-step runs of the {model_preset} model; probed on "
        f"{', '.join(datasets) or 'no task (no data found)'}"
        + (f"; fine-tuned on {', '.join(ft_tasks)} at {ft_point.name}" if ft_tasks else "") + f"; outputs in {out}/")

    summary: dict[str, Any] = {
        "format": FORMAT,
        "command": "transfer_curve",
        "settings": {
            "recipes": {r.name: {"overrides": list(r.overrides), "layer": r.layer, "pool": r.pool,
                                 "description": r.describe()} for r in recipes},
            "reference": reference,
            "budgets": budgets,
            "steps": step_list,
            "steps_of": steps_of if matching else None,
            "seeds": seeds,
            "largest_seeds": largest_seeds,
            "model_preset": model_preset,
            "overrides": list(overrides),
            "device": device,
            "data_root": str(data_root),
            "tasks": tasks,
            "probe": {"seed": PROBE_SEED},
            "finetune": {t: {"recipe": rec.name, "overrides": ft_overrides, "point": ft_point.name}
                         for t, rec in ft_recipes.items()} if ft_recipes else None,
        },
        "tasks": task_info,
        "handcrafted": {},
        "random": {},
        "runs": {r.name: {} for r in recipes},
        "results": {},
        "differences": [],
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    opts = dict(device=device, batch_size=probe_batch_size, cache_dir=cache_dir, progress=progress, log=log)

    for t, ds in datasets.items():
        log(f"== probe {HANDCRAFTED} on {t}")
        res, reused = probe_run(ds, out / HANDCRAFTED / t, checkpoint=None, model=HANDCRAFTED, **opts)
        summary["handcrafted"][t] = {**res, "reused": reused}

    def save(figure: bool) -> None:
        summary["seconds"] = round(time.time() - t_all, 1)
        _aggregate(summary)
        write_summary(out, summary, figure=figure)

    def run(recipe: CurveRecipe, point: Point, seed: int) -> dict:
        run_dir = out / recipe.name / point.name / f"seed{seed}"
        label = _label({"minutes": point.minutes, "matched": point.matched, "nominal_steps": point.steps}, reference)
        log(f"== {recipe.name}, {label}, seed {seed} -> {run_dir}")
        info = train_run(config_of(recipe, point, seed), run_dir, log)
        info.update(run_dir=str(run_dir), minutes=point.minutes, nominal_steps=point.steps, matched=point.matched,
                    scores={}, finetune={})
        twin = next((r for r in recipes if r.name in summary["random"] and _same_random_init(r, recipe)), None)
        if recipe.name not in summary["random"] and twin is not None:  # the objective changes no untrained weight
            summary["random"][recipe.name] = {t: {**res, "shared_with": twin.name}
                                              for t, res in summary["random"][twin.name].items()}
        if recipe.name not in summary["random"]:  # the random-init reference, once per recipe (its architecture,
            summary["random"][recipe.name] = {}   # pooling and preprocessing: those of the recipe's first run)
            for t, ds in datasets.items():
                log(f"== probe {recipe.name} at random init on {t}")
                res, reused = probe_run(ds, out / recipe.name / RANDOM / "probe" / t, checkpoint=run_dir, model=RANDOM,
                                        layer=recipe.layer, pool=recipe.pool, **opts)
                summary["random"][recipe.name][t] = {**res, "reused": reused, "checkpoint": str(run_dir)}
        for t, ds in datasets.items():
            log(f"== probe {recipe.name} {point.name} seed {seed} on {t}")
            res, reused = probe_run(ds, run_dir / "probe" / t, checkpoint=run_dir, layer=recipe.layer,
                                    pool=recipe.pool, **opts)
            info["scores"][t] = {**res, "reused": reused}
            log(f"   {t}: {format_score(res['metric'], res['mean'])}" + (" (reused)" if reused else ""))
        summary["runs"][recipe.name].setdefault(point.name, {})[f"seed{seed}"] = info
        if point == ft_point:
            save(figure=False)  # the probes show while the (long) fine-tuning runs
            for t, base in ft_recipes.items():
                if t in datasets:
                    log(f"== fine-tune {recipe.name} {point.name} seed {seed} on {t} (recipe {base.name})")
                    ft = load_recipe(base.name, ft_overrides + [f"seed={seed}"])
                    res, reused = finetune_run(datasets[t], run_dir / "finetune" / t, checkpoint=run_dir, recipe=ft,
                                               device=device, progress=progress, log=log)
                    info["finetune"][t] = {**res, "reused": reused}
                    log(f"   {t}: fine-tuned {format_score(res['metric'], res['finetuned']['mean'])}, random init "
                        f"{format_score(res['metric'], res['random']['mean'])}" + (" (reused)" if reused else ""))
        save(figure=False)
        return info

    for i, (point, _) in enumerate(stages):
        matched = None  # the step-matched point of this budget, once the reference's seed 0 has run
        for k in range(n_seeds[point.name]):
            for r in recipes:
                info = run(r, point, k)
                if matching and r.name == reference and k == 0:
                    if info["steps"] is None:
                        raise AudioPGError(f"{info['run_dir']}: its config.json records no step count to match")
                    matched = Point(steps=int(info["steps"]), matched=point.minutes)
            if matched is not None:
                for r in recipes[1:]:
                    run(r, matched, k)
        if i < len(stages) - 1:
            save(figure=True)
    summary["complete"] = True
    save(figure=True)
    return summary


# ----------------------------------------------------------------------------- aggregation
def _seed_key(name: str) -> int:
    return int(name[len("seed"):])


def _aggregate(summary: dict) -> None:
    """``results[recipe][point]``: mean ± std over seeds of every task's probe score, the fine-tuning scores and
    their seed-paired differences, mean steps and the load averages; ``differences``: seed-paired differences
    of each recipe against the reference at the same minutes or the same steps."""

    tasks = [t for t, info in summary["tasks"].items() if not info.get("skipped")]
    results: dict[str, dict] = {}
    for recipe, points in summary["runs"].items():
        rows = {}
        for pname, by_seed in points.items():
            runs = [by_seed[k] for k in sorted(by_seed, key=_seed_key)]
            first = runs[0]
            done = [r["steps"] for r in runs if r.get("steps") is not None]
            row: dict[str, Any] = {
                "minutes": first["minutes"], "nominal_steps": first["nominal_steps"], "matched": first["matched"],
                "steps": round(sum(done) / len(done)) if done else None, "n_seeds": len(runs),
                "seeds": sorted(by_seed, key=_seed_key), "load": [r.get("load") for r in runs],
                "tasks": {}, "finetune": {},
            }
            for t in tasks:
                scores = [r["scores"][t]["mean"] for r in runs if t in r["scores"]]
                if scores:
                    row["tasks"][t] = seed_stats(scores)
                fts = [r for r in runs if t in r.get("finetune", {})]
                if fts:
                    ft = [r["finetune"][t]["finetuned"]["mean"] for r in fts]
                    rnd = [r["finetune"][t]["random"]["mean"] for r in fts]
                    frozen = [r["scores"][t]["mean"] for r in fts if t in r["scores"]]
                    row["finetune"][t] = {
                        "finetuned": seed_stats(ft), "random": seed_stats(rnd),
                        "minus_random": seed_stats([a - b for a, b in zip(ft, rnd)]),
                        "minus_probe": (seed_stats([a - b for a, b in zip(ft, frozen)])
                                        if len(frozen) == len(ft) else None),
                    }
            rows[pname] = row
        results[recipe] = dict(sorted(rows.items(), key=lambda kv: (kv[1]["minutes"] is None,
                                                                    kv[1]["minutes"] or kv[1]["steps"] or 0)))
    summary["results"] = results
    reference = summary["settings"]["reference"]
    diffs = []
    ref_runs = summary["runs"].get(reference, {})
    for recipe, rows in results.items():
        if recipe == reference:
            continue
        for pname, row in rows.items():
            if row["minutes"] is not None:
                against, kind = pname, "same minutes"
            elif row["matched"] is not None:
                against, kind = Point(minutes=row["matched"]).name, "same steps"
            else:
                against, kind = pname, "same steps"
            a, b = summary["runs"][recipe][pname], ref_runs.get(against, {})
            entry = {"recipe": recipe, "point": pname, "reference": reference, "against": against, "kind": kind,
                     "tasks": {}}
            for t in tasks:
                d = [a[k]["scores"][t]["mean"] - b[k]["scores"][t]["mean"] for k in sorted(a, key=_seed_key)
                     if k in b and t in a[k]["scores"] and t in b[k]["scores"]]
                if d:
                    entry["tasks"][t] = seed_stats(d)
            if entry["tasks"]:
                diffs.append(entry)
    summary["differences"] = diffs


# ----------------------------------------------------------------------------- outputs
def _metric(summary: dict, task: str) -> str:
    return summary["tasks"].get(task, {}).get("metric") or "accuracy"


def _pm(summary: dict, task: str, r: dict | None, n_want: int | None = None) -> str:
    if r is None:
        return "–"
    m = _metric(summary, task)
    cell = f"{format_score(m, r['mean'])} ± {format_score(m, r['std'])}"
    return cell + (f" (n={r['n_seeds']})" if n_want is not None and r.get("n_seeds", n_want) < n_want else "")


def _diff(summary: dict, task: str, r: dict | None) -> str:
    if r is None:
        return "–"
    scale, digits = (100.0, 1) if _metric(summary, task) == "accuracy" else (1.0, 3)
    return f"{r['mean'] * scale:+.{digits}f} ± {r['std'] * scale:.{digits}f} (n={r['n_seeds']})"


def _load_cell(loads: list) -> str:
    cells = [f"{x['start']:.1f}→{x['end']:.1f}" + ("*" if x.get("sessions", 1) > 1 else "") for x in loads if x]
    return ", ".join(cells) or "–"


def _tasks(summary: dict) -> list[str]:
    return [t for t, info in summary["tasks"].items() if not info.get("skipped")]


def _ft_tasks(summary: dict) -> list[str]:
    return [t for t in (summary["settings"].get("finetune") or {}) if t in _tasks(summary)]


def _wanted_seeds(s: dict, row: dict) -> int:
    """How many seeds the row's budget gets: more at the largest budget (and the largest explicit step count)."""
    if row["minutes"] is not None or row["matched"] is not None:
        largest = (row["minutes"] or row["matched"]) == max(s["budgets"])
    else:
        largest = row["nominal_steps"] == max(s["steps"])
    return max(s["seeds"], s["largest_seeds"]) if largest else s["seeds"]


def format_table(summary: dict) -> list[str]:
    """The curve's markdown table: a row per recipe and budget (mean ± std over seeds), the random-init rows
    (one per recipe) and the handcrafted row (± over folds)."""
    s = summary["settings"]
    tasks, ft_tasks = _tasks(summary), _ft_tasks(summary)
    unit = {t: "%" if _metric(summary, t) == "accuracy" else _metric(summary, t) for t in tasks}
    header = (["recipe", "budget", "steps"] + [f"{t} ({unit[t]})" for t in tasks]
              + [f"fine-tuned {t} ({unit[t]}; random init)" for t in ft_tasks] + ["load 1 min (start→end)"])
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 3) + "---|"]
    for recipe, rows in summary["results"].items():
        for row in rows.values():
            cells = [recipe, _label(row, s["reference"]), "–" if row["steps"] is None else str(row["steps"])]
            cells += [_pm(summary, t, row["tasks"].get(t), _wanted_seeds(s, row)) for t in tasks]
            for t in ft_tasks:
                f = row["finetune"].get(t)
                cells.append("–" if f is None else
                             f"{_pm(summary, t, f['finetuned'])} ({_pm(summary, t, f['random'])})")
            cells.append(_load_cell(row["load"]))
            lines.append("| " + " | ".join(cells) + " |")
    for recipe, by_task in summary["random"].items():
        cells = [f"{recipe}, random init (± over folds)", "–", "0"]
        cells += [_pm(summary, t, by_task.get(t)) for t in tasks]
        lines.append("| " + " | ".join(cells + ["–"] * len(ft_tasks) + ["–"]) + " |")
    cells = [f"{HANDCRAFTED} (± over folds)", "–", "–"]
    cells += [_pm(summary, t, summary["handcrafted"].get(t)) for t in tasks]
    lines.append("| " + " | ".join(cells + ["–"] * len(ft_tasks) + ["–"]) + " |")
    return lines


def format_markdown(summary: dict) -> str:
    s = summary["settings"]
    tasks, ft_tasks = _tasks(summary), _ft_tasks(summary)
    budgets = ", ".join(f"{b:g}" for b in s["budgets"])
    lines = [
        "# Transfer curve",
        "",
        f"`{s['model_preset']}` models pre-trained by each recipe"
        + (f" for {budgets} minutes of wall clock" if s["budgets"] else "")
        + (f" and for the steps `{s['steps_of']}` made in those minutes" if s["steps_of"] else "")
        + (f"{' and' if s['budgets'] else ''} for {', '.join(map(str, s['steps']))} steps" if s["steps"] else "")
        + f"; seeds 0..{s['seeds'] - 1}, 0..{max(s['seeds'], s['largest_seeds']) - 1} at the largest budget.  "
        "Frozen linear probes of every encoder (cells: mean ± std, population, over seeds of each run's score, "
        "itself the mean over the task's folds)"
        + (", and fine-tuning at the largest budget against the same network from random init (same recipe, "
           "same seeds; the random-init score in brackets)" if ft_tasks else "")
        + ".  `steps`: optimizer steps made (mean over seeds).  `load 1 min`: the 1-minute load average at the "
        "start and end of each seed's pre-training (* resumed: first start, last end); it includes the run itself."
        + ("" if summary.get("complete") else "  **Incomplete: runs still to do.**"),
        "",
    ]
    lines += format_table(summary)
    diffs = summary.get("differences") or []
    if diffs:
        lines += ["", f"## Against `{s['reference']}`", "",
                  "Probe-score differences paired by seed (same seed, same probe folds), mean ± std over seeds, "
                  "in points for accuracy; positive: the recipe scores higher.", "",
                  "| recipe | at | " + " | ".join(tasks) + " |", "|---|---|" + "---:|" * len(tasks)]
        for d in diffs:
            row = summary["results"][d["recipe"]][d["point"]]
            lines.append(f"| {d['recipe']} − {d['reference']} | {_label(row, s['reference'])}, {d['kind']} | "
                         + " | ".join(_diff(summary, t, d["tasks"].get(t)) for t in tasks) + " |")
    ft_rows = [(recipe, row) for recipe, rows in summary["results"].items() for row in rows.values() if row["finetune"]]
    if ft_rows:
        lines += ["", "## Fine-tuning", "",
                  "Differences paired by seed (the fine-tuning seed is the pre-training seed), mean ± std over seeds.",
                  "", "| recipe | at | difference | " + " | ".join(ft_tasks) + " |",
                  "|---|---|---|" + "---:|" * len(ft_tasks)]
        for recipe, row in ft_rows:
            for key, text in (("minus_random", "fine-tuned − random init"),
                              ("minus_probe", "fine-tuned − frozen probe")):
                lines.append(f"| {recipe} | {_label(row, s['reference'])} | {text} | "
                             + " | ".join(_diff(summary, t, (row["finetune"].get(t) or {}).get(key)) for t in ft_tasks)
                             + " |")
        for t in ft_tasks:
            ft = s["finetune"][t]
            extra = ", ".join(f"`{o}`" for o in ft["overrides"])
            lines.append(f"\n{t}: recipe `{ft['recipe']}`" + (f" with {extra}" if extra else "") + ".")
    lines += ["", "## Recipes", ""] + [f"- `{name}`: {r['description']}" for name, r in s["recipes"].items()]
    if s["overrides"]:
        lines += ["", "Settings of every run: " + ", ".join(f"`{o}`" for o in s["overrides"])]
    lines += ["", "## Tasks", ""]
    for t, info in summary["tasks"].items():
        if info.get("skipped"):
            lines.append(f"- `{t}`: **skipped**: {info['skipped']}")
        else:
            lines.append(f"- `{t}`: {info['num_items']} clips from `{info['data']}`; {info['protocol']}")
            lines += [f"  - note: {n}" for n in info.get("notes", [])]
    lines += ["", f"Data: `{s['data_root']}`. Runs: `<recipe>/<min|steps><N>/seed<k>/` (probe reports in "
                  "`probe/<task>/`, fine-tuning in `finetune/<task>/`), random init `<recipe>/random/probe/<task>/`, "
                  "handcrafted `handcrafted/<task>/`."]
    return "\n".join(lines) + "\n"


def plot_curve(summary: dict) -> bytes:
    """PNG bytes: a row per task (probe tasks, then fine-tuned tasks), score against minutes (left) and against
    optimizer steps (right); a line per recipe (filled markers: timed runs, hollow: step-matched or explicit
    step counts), its random init dotted, the handcrafted baseline dashed; fine-tuning rows show the random-init
    network fine-tuned alike as hollow diamonds."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks, ft_tasks = _tasks(summary), _ft_tasks(summary)
    rows = [(t, False) for t in tasks] + [(t, True) for t in ft_tasks]
    fig = Figure(figsize=(10.0, 1.0 + 2.6 * max(1, len(rows))))
    FigureCanvasAgg(fig)
    if not rows:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no task had data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        axes = fig.subplots(len(rows), 2, squeeze=False)
        cmap = matplotlib.colormaps["tab10"]
        colors = {name: cmap(i % 10) for i, name in enumerate(summary["settings"]["recipes"])}
        for (t, ft), (ax_min, ax_steps) in zip(rows, axes):
            scale = 100.0 if _metric(summary, t) == "accuracy" else 1.0
            for recipe, by_point in summary["results"].items():
                c = colors[recipe]
                pts = []
                for row in by_point.values():
                    r = (row["finetune"].get(t) or {}).get("finetuned") if ft else row["tasks"].get(t)
                    if r is not None:
                        pts.append((row, r))
                for ax, key in ((ax_min, "minutes"), (ax_steps, "steps")):
                    line = sorted([(row[key], r) for row, r in pts if row[key] is not None], key=lambda p: p[0])
                    if line:
                        ax.plot([x for x, _ in line], [r["mean"] * scale for _, r in line], color=c, linewidth=1.2,
                                label=recipe)
                    for row, r in pts:
                        if row[key] is None:
                            continue
                        timed = row["minutes"] is not None
                        ax.errorbar(row[key], r["mean"] * scale, yerr=r["std"] * scale, fmt="o", color=c,
                                    markerfacecolor=c if timed else "white", capsize=2, markersize=5)
                        if ft:
                            rr = row["finetune"][t]["random"]
                            ax.errorbar(row[key], rr["mean"] * scale, yerr=rr["std"] * scale, fmt="D", color=c,
                                        markerfacecolor="white", capsize=2, markersize=5)
                    rnd = summary["random"].get(recipe, {}).get(t)
                    if rnd is not None and not ft:
                        ax.axhline(rnd["mean"] * scale, color=c, linestyle=":", linewidth=1.0)
            hc = summary["handcrafted"].get(t)
            for ax, xlabel in ((ax_min, "pre-training minutes"), (ax_steps, "pre-training steps")):
                if hc is not None and not ft:
                    ax.axhline(hc["mean"] * scale, color="black", linestyle="--", linewidth=1.0, label=HANDCRAFTED)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.set_ylabel(f"{t}{' fine-tuned' if ft else ''} ({'%' if scale == 100.0 else _metric(summary, t)})",
                              fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(linewidth=0.4, alpha=0.6)
        axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        s = summary["settings"]
        fig.suptitle(f"Transfer curve: {s['model_preset']} models; dotted: random init, dashed: handcrafted; hollow "
                     "circles: step counts, hollow diamonds: random init fine-tuned"
                     + ("" if summary.get("complete") else " (incomplete)"), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_summary(out_dir: str | os.PathLike, summary: dict, figure: bool = True) -> None:
    """``curve.json`` and ``curve.md`` (and with ``figure`` ``curve.png``) in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    atomic_write_text(out / SUMMARY_JSON, json.dumps(summary, indent=2, default=json_default) + "\n")
    atomic_write_text(out / SUMMARY_MD, format_markdown(summary))
    if figure:
        atomic_write_bytes(out / SUMMARY_PNG, plot_curve(summary))
