"""Evaluation on real audio (docs/evaluation.md): datasets with their official protocols, frozen features,
the linear probe, fine-tuning, metrics, reports and downloads.  Command line: :mod:`audiopg.cli.eval`.
"""
from audiopg.eval.datasets import DATASETS, Dataset, Item, Split, load_dataset

__all__ = ["DATASETS", "Dataset", "Item", "Split", "load_dataset"]
