"""Evaluation datasets in their official layouts, each with its official protocol (docs/evaluation.md).

:func:`load_dataset` picks a loader by name (:data:`DATASETS`); every loader returns a :class:`Dataset`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from audiopg.core.errors import ConfigError
from audiopg.eval.datasets.base import (
    MULTI,
    REGRESSION,
    SINGLE,
    Dataset,
    DatasetError,
    FixedSplit,
    GroupCV,
    Item,
    LeaveOneGroupOut,
    OfficialFolds,
    Protocol,
    Split,
)
from audiopg.eval.datasets.esc50 import load_esc50
from audiopg.eval.datasets.folder import load_folder
from audiopg.eval.datasets.fsd50k import load_fsd50k
from audiopg.eval.datasets.fsdd import load_fsdd
from audiopg.eval.datasets.manifest import load_manifest
from audiopg.eval.datasets.scv2 import load_scv2
from audiopg.eval.datasets.us8k import load_us8k

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "default_data_root",
    "SINGLE",
    "MULTI",
    "REGRESSION",
    "Item",
    "Split",
    "Protocol",
    "OfficialFolds",
    "FixedSplit",
    "GroupCV",
    "LeaveOneGroupOut",
    "Dataset",
    "DatasetError",
    "load_dataset",
    "load_esc50",
    "load_us8k",
    "load_scv2",
    "load_fsd50k",
    "load_fsdd",
    "load_folder",
    "load_manifest",
]

DATA_ENV = "AUDIOPG_DATA"  # where the shared evaluation data lives (fsdd/, esc50-fold4/, ...)


def default_data_root() -> Path:
    """``$AUDIOPG_DATA``, else ``shared/data`` beside the checkout (``../shared/data`` from its root), else
    ``../shared/data`` from the working directory."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[4]
    if (checkout / "pyproject.toml").exists():
        return checkout.parent / "shared" / "data"
    return Path.cwd().parent / "shared" / "data"


LOADERS: dict[str, Callable[..., Dataset]] = {
    "esc50": load_esc50,
    "us8k": load_us8k,
    "scv2": load_scv2,
    "fsd50k": load_fsd50k,
    "fsdd": load_fsdd,
    "folder": load_folder,
    "manifest": load_manifest,
}
#: the names :func:`load_dataset` knows (``--task`` on the command line)
DATASETS = tuple(LOADERS)


def load_dataset(
    name: str,
    root: str | Path,
    *,
    protocol: str | None = None,
    target_column: str | None = None,
    target_type: str = "auto",
    skip_bad: bool = False,
    seed: int = 0,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``root``."""
    if name not in LOADERS:
        raise ConfigError("task", f"unknown task {name!r} (known: {', '.join(DATASETS)})")
    if protocol is not None and name != "fsdd":
        raise ConfigError("protocol", f"--protocol applies to fsdd only; {name} uses its official protocol")
    if target_column is not None and name != "manifest":
        raise ConfigError("target_column", "--target-column applies to the manifest task only")
    options: dict = {}
    if name == "fsdd":
        options["protocol"] = protocol or "own"
    if name == "manifest":
        options.update(target_column=target_column, target_type=target_type)
    return LOADERS[name](root, skip_bad=skip_bad, seed=seed, **options)
