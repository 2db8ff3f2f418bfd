"""World ablation: pre-train one small model per world variant and seed, probe each, tabulate.

docs/experiments.md ("World ablation") has the details.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from audiopg.core.errors import ConfigError
from audiopg.core.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_own_folder,
    is_temp,
)
from audiopg.core.page import Page
from audiopg.eval.datasets import default_data_root
from audiopg.eval.report import format_score
from audiopg.experiments.transfer import (
    HANDCRAFTED,
    PROBE_SEED,
    build_run_config,
    check_existing_run,
    json_default,
    load_tasks,
    parse_tasks,
    probe_run,
    seed_stats,
    train_run,
)
from audiopg.synth import load_world_config

__all__ = [
    "FAMILY_OVERRIDES",
    "Variant",
    "parse_families",
    "parse_variant",
    "default_variants",
    "run_config",
    "run_ablation",
]

# Source families of the rich world -> the world overrides (keys of audiopg/synth/presets/rich.yaml) that
# switch the family off.  "textures" groups the three texture sources; "scene" keeps one source per clip;
# "room" removes both acoustic stages (reverberation, and distance: level drop and air absorption).
FAMILY_OVERRIDES: dict[str, tuple[str, ...]] = {
    "voice": ("sources.voice.enabled=false",),
    "modal": ("sources.modal.enabled=false",),
    "string": ("sources.string.enabled=false",),
    "textures": ("sources.granular.enabled=false", "sources.modulated_noise.enabled=false",
                 "sources.glide.enabled=false"),
    "scene": ("scene.sources_per_clip=[1, 1]",),
    "room": ("room.enabled=false", "distance.enabled=false"),
}

FORMAT = 1
SUMMARY_JSON = "ablation.json"
SUMMARY_MD = "ablation.md"
SUMMARY_PNG = "ablation.png"
SUMMARY_HTML = "index.html"  # with html=True: the summary and its figure as one page (docs/pages.md)
PROBE_LAYER = -1
PROBE_POOL = "mean"


# ----------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """A world preset with some source families switched off."""

    name: str
    preset: str
    without: tuple[str, ...] = ()

    def world_overrides(self) -> list[str]:
        """Overrides of the world config (no ``world.`` prefix), for :func:`load_world_config`."""
        return [o for fam in self.without for o in FAMILY_OVERRIDES[fam]]

    def pretrain_overrides(self) -> list[str]:
        """``--set`` overrides of the pre-training config choosing this world."""
        return [f"world.preset={self.preset}"] + [f"world.{o}" for o in self.world_overrides()]

    def describe(self) -> str:
        if not self.without:
            return f"world preset {self.preset}"
        return f"{self.preset} without {', '.join(self.without)} ({'; '.join(self.world_overrides())})"


def parse_families(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"voice,room"`` -> ("voice", "room"); unknown names raise ConfigError."""
    if text is None:
        return ()
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s and s.strip()]
    for n in names:
        if n not in FAMILY_OVERRIDES:
            raise ConfigError("without", f"unknown family {n!r} (known: {', '.join(FAMILY_OVERRIDES)})")
    return tuple(dict.fromkeys(names))


def parse_variant(name: str, default_preset: str = "rich") -> Variant:
    """``rich`` / ``paper`` (a preset), ``rich-no-voice``, ``rich-no-voice+room`` or ``no-voice`` (the default preset)."""
    name = name.strip()
    if not name:
        raise ConfigError("variants", "empty variant name")
    if name.startswith("no-"):
        name = f"{default_preset}-{name}"
    preset, sep, rest = name.partition("-no-")
    if not sep:
        return Variant(name, name)
    fams = parse_families(rest.split("+"))
    if not fams or not preset:
        raise ConfigError("variants", f"{name!r}: expected PRESET or PRESET-no-FAMILY[+FAMILY...]")
    return Variant(f"{preset}-no-{'+'.join(fams)}", preset, fams)


def default_variants(preset: str = "rich", without: Sequence[str] = tuple(FAMILY_OVERRIDES)) -> list[Variant]:
    """``paper``, the preset, and the preset without each family in turn."""
    out = [Variant("paper", "paper"), Variant(preset, preset)] + [
        Variant(f"{preset}-no-{fam}", preset, (fam,)) for fam in parse_families(list(without))
    ]
    return list({v.name: v for v in out}.values())


def check_variant(variant: Variant) -> None:
    """ConfigError unless the preset loads and every removed family changes the world (it was on)."""

    try:
        base = load_world_config(variant.preset)
    except ConfigError as err:
        raise ConfigError("variants", f"{variant.name}: {err}") from None
    for fam in variant.without:
        try:
            changed = load_world_config(variant.preset, list(FAMILY_OVERRIDES[fam]))
        except ConfigError as err:
            raise ConfigError("variants", f"{variant.name}: {err}") from None
        if changed.to_dict() == base.to_dict():
            raise ConfigError("without", f"{variant.name}: {fam!r} is already off in world preset "
                                         f"{variant.preset!r}; removing it changes nothing")


# ----------------------------------------------------------------------------- pre-training
def run_config(variant: Variant, seed: int, *, model_preset: str = "tiny", minutes: float | None = None,
               steps: int | None = None, overrides: Sequence[str] = (), device: str = "auto",
               progress: bool = True):
    """The resolved :class:`PretrainConfig` of one run: ``overrides`` (``--set``), then the variant's world,
    then the flags (model preset, budget, seed, device)."""

    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key in ("world.preset", "world", "seed", "steps", "minutes", "model.preset", "model"):
            raise ConfigError(key, "is set by the ablation itself (use --variants, --seeds, --steps/--minutes, "
                                   "--model-preset)")
    return build_run_config(list(overrides) + variant.pretrain_overrides(), seed, model_preset=model_preset,
                            minutes=minutes, steps=steps, device=device, progress=progress)


# ----------------------------------------------------------------------------- the whole ablation
def _in_ablation(path: Path) -> bool:
    """What an ablation folder holds: its summaries, the handcrafted probes, ``VARIANT/seedK`` run folders."""
    if path.name in (SUMMARY_JSON, SUMMARY_MD, SUMMARY_PNG, SUMMARY_HTML, HANDCRAFTED):
        return True
    return path.is_dir() and all(p.name.startswith("seed") or is_temp(p) for p in path.iterdir())


def run_ablation(
    out_dir: str | os.PathLike,
    *,
    variants: Sequence[Variant] | None = None,
    seeds: int = 2,
    minutes: float | None = None,
    steps: int | None = None,
    data_root: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    model_preset: str = "tiny",
    overrides: Sequence[str] = (),
    device: str = "auto",
    probe_batch_size: int = 32,
    cache_dir: str | os.PathLike | None | bool = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    html: bool = False,
) -> dict:
    """Pre-train every variant x seed, probe each on every task with data, write the summary; return it.

    ``cache_dir`` is the probe's embedding cache (None: audiopg's default, False: none); ``html``: the summary
    also as ``index.html``.
    Raises :class:`~audiopg.experiments.transfer.RunInterrupted` when a run is stopped by a signal.
    """

    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out_dir)
    variants = list(variants) if variants is not None else default_variants()
    if not variants:
        raise ConfigError("variants", "no variant to train")
    if len({v.name for v in variants}) != len(variants):
        raise ConfigError("variants", "a variant is listed twice")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError("seeds", f"must be a positive integer, got {seeds!r}")
    if (minutes is None) == (steps is None):
        raise ConfigError("minutes", "give the budget of every run: minutes or steps (not both)")
    tasks = parse_tasks(tasks)
    data_root = Path(data_root).expanduser() if data_root is not None else default_data_root()

    # check everything before the first run: every variant's world and config
    configs = {}
    for v in variants:
        check_variant(v)
        for k in range(seeds):
            configs[v.name, k] = run_config(v, k, model_preset=model_preset, minutes=minutes, steps=steps,
                                            overrides=overrides, device=device, progress=progress)

    # the folder must be new or an ablation; runs already in it must have been started with these settings
    check_own_folder(out, _in_ablation, "an ablation folder")
    for (name, k), config in configs.items():
        check_existing_run(config, out / name / f"seed{k}")

    # the data: load each task's dataset now, skip those whose folder is absent
    datasets, task_info = load_tasks(data_root, tasks, log)

    n_runs = len(variants) * seeds
    budget = f"{minutes:g} min" if minutes is not None else f"{steps} steps"
    log(f"ablation: {len(variants)} variants x {seeds} seed(s) = {n_runs} {model_preset} runs of {budget} each"
        + (f" (about {n_runs * minutes:g} min of pre-training)" if minutes is not None else "")
        + f", probed on {', '.join(datasets) or 'no task (no data found)'}; outputs in {out}/")

    summary: dict[str, Any] = {
        "format": FORMAT,
        "command": "ablate",
        "settings": {
            "variants": {v.name: {"world_preset": v.preset, "without": list(v.without),
                                  "world_overrides": v.world_overrides(), "description": v.describe()}
                         for v in variants},
            "seeds": list(range(seeds)),
            "minutes": minutes,
            "steps": steps,
            "model_preset": model_preset,
            "overrides": list(overrides),
            "device": device,
            "data_root": str(data_root),
            "tasks": tasks,
            "probe": {"layer": PROBE_LAYER, "pool": PROBE_POOL, "seed": PROBE_SEED},
        },
        "tasks": task_info,
        "runs": {v.name: {} for v in variants},
        "handcrafted": {},
        "results": {},
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()

    # the handcrafted baseline, once per task
    for t, ds in datasets.items():
        log(f"== probe {HANDCRAFTED} on {t}")
        res, reused = probe_run(ds, out / HANDCRAFTED / t, checkpoint=None, model=HANDCRAFTED, device=device,
                                batch_size=probe_batch_size, cache_dir=cache_dir, progress=progress, log=log)
        summary["handcrafted"][t] = {**res, "reused": reused}
        log(f"   {HANDCRAFTED} {t}: {format_score(res['metric'] or 'accuracy', res['mean'])}" + (" (reused)" if reused else ""))

    # every run: seed-major, so that a complete set of variants exists after each seed
    i = 0
    for k in range(seeds):
        for v in variants:
            i += 1
            run_dir = out / v.name / f"seed{k}"
            log(f"== run {i}/{n_runs}: {v.name} seed {k} ({v.describe()}) -> {run_dir}")
            info = train_run(configs[v.name, k], run_dir, log)
            info["run_dir"] = str(run_dir)
            info["scores"] = {}
            for t, ds in datasets.items():
                log(f"== probe {v.name} seed {k} on {t}")
                res, reused = probe_run(ds, run_dir / "probe" / t, checkpoint=run_dir, layer=PROBE_LAYER,
                                        pool=PROBE_POOL, device=device, batch_size=probe_batch_size,
                                        cache_dir=cache_dir, progress=progress, log=log)
                info["scores"][t] = {**res, "reused": reused}
                log(f"   {v.name} seed {k} {t}: {format_score(res['metric'] or 'accuracy', res['mean'])}" + (" (reused)" if reused else ""))
            summary["runs"][v.name][f"seed{k}"] = info
            _aggregate(summary, variants, list(datasets))
            summary["seconds"] = round(time.time() - t_all, 1)
            write_summary(out, summary, html)
    summary["complete"] = True
    summary["seconds"] = round(time.time() - t_all, 1)
    _aggregate(summary, variants, list(datasets))
    write_summary(out, summary, html)
    return summary


def _aggregate(summary: dict, variants: Sequence[Variant], tasks: Sequence[str]) -> None:
    """Over the seeds done so far: ``results[variant][task]`` = mean and std (population) of the scores,
    ``steps[variant]`` = mean optimizer steps, and ``differences`` = seed-paired score differences
    (see :func:`paired_differences`)."""

    results, steps = {}, {}
    for v in variants:
        row = {}
        for t in tasks:
            scores = [r["scores"][t]["mean"] for _, r in sorted(summary["runs"][v.name].items())
                      if t in r.get("scores", {})]
            if scores:
                row[t] = seed_stats(scores)
        results[v.name] = row
        done = [r["steps"] for r in summary["runs"][v.name].values() if r.get("steps") is not None]
        steps[v.name] = round(sum(done) / len(done)) if done else None
    summary["results"] = results
    summary["steps"] = steps
    summary["differences"] = paired_differences(summary, variants, tasks)


def paired_differences(summary: dict, variants: Sequence[Variant], tasks: Sequence[str]) -> list[dict]:
    """What each part of the world buys, in score differences paired by seed (same seed, same probe folds).

    For every variant ``P-no-F`` whose full preset ``P`` is also a variant: ``P`` minus ``P-no-F`` (what
    family F adds to P); for every preset variant ``P`` other than ``paper``, when ``paper`` is a variant:
    ``P`` minus ``paper``.  Each entry: ``{"a", "b", "label", "tasks": {task: {"mean", "std", "n_seeds",
    "seeds"}}}`` with mean and std (population) over the seeds both runs have done.
    """

    names = {v.name for v in variants}
    pairs = []
    for v in variants:
        if v.without and v.preset in names:
            pairs.append((v.preset, v.name, f"{'+'.join(v.without)} (`{v.preset}` − `{v.name}`)"))
    for v in variants:
        if not v.without and v.name != "paper" and "paper" in names:
            pairs.append((v.name, "paper", f"`{v.name}` − `paper`"))
    out = []
    for a, b, label in pairs:
        row = {}
        ra, rb = summary["runs"].get(a, {}), summary["runs"].get(b, {})
        for t in tasks:
            diffs = [ra[k]["scores"][t]["mean"] - rb[k]["scores"][t]["mean"] for k in sorted(ra)
                     if k in rb and t in ra[k].get("scores", {}) and t in rb[k].get("scores", {})]
            if diffs:
                row[t] = seed_stats(diffs)
        out.append({"a": a, "b": b, "label": label, "tasks": row})
    return out


# ----------------------------------------------------------------------------- outputs
def _metric_of(summary: dict, task: str) -> str:
    return summary["tasks"].get(task, {}).get("metric") or "accuracy"


def format_table(summary: dict) -> list[str]:
    """Markdown table: one row per variant (mean ± std over seeds) and the handcrafted row."""
    tasks = [t for t, info in summary["tasks"].items() if not info.get("skipped")]
    n_seeds = len(summary["settings"]["seeds"])
    header = ["variant"] + [f"{t} ({'%' if _metric_of(summary, t) == 'accuracy' else _metric_of(summary, t)})"
                            for t in tasks] + ["steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(tasks) + 1)]
    for name, row in summary["results"].items():
        cells = [name]
        for t in tasks:
            r = row.get(t)
            if r is None:
                cells.append("–")
                continue
            cell = f"{format_score(_metric_of(summary, t), r['mean'])} ± {format_score(_metric_of(summary, t), r['std'])}"
            if r["n_seeds"] < n_seeds:
                cell += f" (n={r['n_seeds']})"
            cells.append(cell)
        n_steps = summary.get("steps", {}).get(name)
        cells.append("–" if n_steps is None else str(n_steps))
        lines.append("| " + " | ".join(cells) + " |")
    cells = [f"{HANDCRAFTED} (± over folds)"]
    for t in tasks:
        r = summary["handcrafted"].get(t)
        cells.append("–" if r is None else
                     f"{format_score(_metric_of(summary, t), r['mean'])} ± {format_score(_metric_of(summary, t), r['std'])}")
    lines.append("| " + " | ".join(cells + ["–"]) + " |")
    return lines


def format_differences(summary: dict) -> list[str]:
    """Markdown table of :func:`paired_differences` (points for accuracy, 3 decimals for other metrics),
    empty when there is no pair."""
    diffs = summary.get("differences") or []
    if not diffs:
        return []
    tasks = [t for t, info in summary["tasks"].items() if not info.get("skipped")]

    def cell(t: str, r: dict | None) -> str:
        if r is None:
            return "–"
        scale, digits = (100.0, 1) if _metric_of(summary, t) == "accuracy" else (1.0, 3)
        return f"{r['mean'] * scale:+.{digits}f} ± {r['std'] * scale:.{digits}f} (n={r['n_seeds']})"

    lines = ["| part | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for d in diffs:
        lines.append("| " + d["label"] + " | " + " | ".join(cell(t, d["tasks"].get(t)) for t in tasks) + " |")
    return lines


def format_markdown(summary: dict) -> str:
    s = summary["settings"]
    budget = f"{s['minutes']:g} min" if s["minutes"] is not None else f"{s['steps']} steps"
    lines = [
        "# World ablation",
        "",
        f"Every variant: one `{s['model_preset']}` model per seed ({', '.join(map(str, s['seeds']))}), "
        f"{budget} of pre-training each, then a linear probe of the frozen encoder (layer {s['probe']['layer']}, "
        f"{s['probe']['pool']}-pooled). Cells: mean ± std (population) over seeds of each run's score "
        "(itself the mean over the task's folds); the handcrafted row's ± is over folds. `steps`: optimizer "
        "steps each run made within its budget (mean over seeds)."
        + ("" if summary.get("complete") else " **Incomplete: runs still to do.**"),
        "",
    ]
    lines += format_table(summary)
    lines += ["", f"![ablation]({SUMMARY_PNG})"]
    diff_lines = format_differences(summary)
    if diff_lines:
        lines += ["", "## What each part buys", "",
                  "Score differences paired by seed (same seed, same probe folds), mean ± std (population) over "
                  "seeds, in points for accuracy; positive: the first world scores higher.", ""]
        lines += diff_lines
    lines += ["", "## Variants", ""]
    for name, v in s["variants"].items():
        lines.append(f"- `{name}`: {v['description']}")
    if s["overrides"]:
        lines += ["", "Settings of every run: " + ", ".join(f"`{o}`" for o in s["overrides"])]
    lines += ["", "## Tasks", ""]
    for t, info in summary["tasks"].items():
        if info.get("skipped"):
            lines.append(f"- `{t}`: **skipped**: {info['skipped']}")
        else:
            lines.append(f"- `{t}`: {info['num_items']} clips from `{info['data']}`; {info['protocol']}")
            lines += [f"  - note: {n}" for n in info.get("notes", [])]
    lines += ["", f"Data: `{s['data_root']}`. Run folders: `<variant>/seed<k>/`, probe reports in "
                  "`<variant>/seed<k>/probe/<task>/`, the handcrafted baseline's in `handcrafted/<task>/`."]
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict) -> bytes:
    """PNG bytes: one group of bars per task, one bar per variant (error bar: std over seeds),
    the handcrafted baseline as a dashed line over each group."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = [t for t, info in summary["tasks"].items() if not info.get("skipped")]
    names = list(summary["results"])
    fig = Figure(figsize=(max(6.0, 1.2 + len(tasks) * (0.5 + 0.32 * len(names))), 4.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if not tasks:
        ax.text(0.5, 0.5, "no task had data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        import matplotlib

        cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
        width = 0.8 / max(1, len(names))
        x = np.arange(len(tasks))
        scale = [100.0 if _metric_of(summary, t) == "accuracy" else 1.0 for t in tasks]
        for j, name in enumerate(names):
            row = summary["results"][name]
            means = [row[t]["mean"] * sc if t in row else np.nan for t, sc in zip(tasks, scale)]
            stds = [row[t]["std"] * sc if t in row else 0.0 for t, sc in zip(tasks, scale)]
            ax.bar(x - 0.4 + width * (j + 0.5), means, width, yerr=stds, capsize=2, label=name,
                   color=cmap(j % cmap.N), edgecolor="black", linewidth=0.4, error_kw={"linewidth": 0.8})
        labelled = False
        for i, (t, sc) in enumerate(zip(tasks, scale)):
            r = summary["handcrafted"].get(t)
            if r is not None:
                ax.hlines(r["mean"] * sc, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1.2, zorder=3,
                          label=None if labelled else HANDCRAFTED)
                labelled = True
        ax.set_xticks(x)
        ax.set_xticklabels(tasks)
        metrics = {_metric_of(summary, t) for t in tasks}
        ax.set_ylabel("accuracy (%)" if metrics == {"accuracy"} else " / ".join(sorted(metrics)))
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", linewidth=0.4, alpha=0.6)
        ax.set_axisbelow(True)
        ax.legend(fontsize=7, ncol=2 if len(names) > 5 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)
        s = summary["settings"]
        budget = f"{s['minutes']:g} min" if s["minutes"] is not None else f"{s['steps']} steps"
        ax.set_title(f"World ablation: {s['model_preset']} models, {budget} each, mean ± std over "
                     f"{len(s['seeds'])} seed(s)" + ("" if summary.get("complete") else " (incomplete)"), fontsize=9)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_summary(out_dir: str | os.PathLike, summary: dict, html: bool = False) -> None:
    """``ablation.json``, ``ablation.md`` and ``ablation.png`` in ``out_dir`` (with ``html`` also ``index.html``:
    the markdown with its figure), each written atomically."""
    out = Path(out_dir)
    png = plot_summary(summary)
    text = format_markdown(summary)
    atomic_write_text(out / SUMMARY_JSON, json.dumps(summary, indent=2, default=json_default) + "\n")
    atomic_write_text(out / SUMMARY_MD, text)
    atomic_write_bytes(out / SUMMARY_PNG, png)
    if html:
        Page.from_markdown(text, {SUMMARY_PNG: png}).write(out / SUMMARY_HTML)

