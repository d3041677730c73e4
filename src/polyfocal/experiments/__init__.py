"""Experiments: ``polyfocal compare`` / ``sweep`` / ``plot`` (needs the ``experiments`` extra).

Modules: :mod:`~polyfocal.experiments.data` (long-tailed digits, image folders, synthetic blobs),
:mod:`~polyfocal.experiments.models` (MLP, ResNet-18), :mod:`~polyfocal.experiments.losses` (loss specs),
:mod:`~polyfocal.experiments.runner` (training, torchmetrics evaluation, resumable runs, torchrun),
:mod:`~polyfocal.experiments.report` (summaries, paired intervals and p-values, tables, figures),
:mod:`~polyfocal.experiments.outdir` (the results directory: checked, locked, written atomically) and
:mod:`~polyfocal.experiments.cli` (the subcommands).  Importing this package imports nothing heavy; the
names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_LOSSES", "LossSpec", "TrainConfig", "parse_loss_spec", "run_experiment", "summarize"]

_EXPORTS = {
    "DEFAULT_LOSSES": "losses",
    "LossSpec": "losses",
    "parse_loss_spec": "losses",
    "TrainConfig": "runner",
    "run_experiment": "runner",
    "summarize": "report",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'polyfocal.experiments' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
