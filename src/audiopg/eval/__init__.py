"""Evaluation on real audio: dataset loaders with their official protocols, linear probes, baselines,
metrics, reports and dataset downloads.

* :mod:`audiopg.eval.datasets` -- ESC-50, UrbanSound8K, Speech Commands V2, FSD50K, FSDD, folder-per-class
  and CSV manifests, each with its protocol (:func:`load_dataset`).
* :mod:`audiopg.eval.probe` -- frozen-feature extraction (cached) and the logistic / ridge probe
  (:func:`run_probe`).
* :mod:`audiopg.eval.features` -- the 160-d log-mel statistics baseline.
* :mod:`audiopg.eval.metrics` -- accuracy, average precision and macro mAP, R², fold summaries.
* :mod:`audiopg.eval.report` -- ``results.json``, ``results.md`` and confusion-matrix PNGs.
* :mod:`audiopg.eval.download` -- resumable, verified downloads from the official addresses.

Fine-tuning lives in :mod:`audiopg.eval.finetune`.  Command line: ``audiopg probe``, ``audiopg finetune``,
``audiopg download`` (:mod:`audiopg.cli.eval`).
"""
from audiopg.eval.datasets import TASKS, Dataset, Item, Split, load_dataset

__all__ = ["TASKS", "Dataset", "Item", "Split", "load_dataset"]
