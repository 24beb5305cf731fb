"""Task metrics over predicted and true class indices."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lmaas_tune.registry import Registry

Metric = Callable[[np.ndarray, np.ndarray], float]
METRICS: Registry[Metric] = Registry("metric")


@METRICS.register("accuracy", aliases=("acc",))
def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float((pred == gold).mean()) if gold.size else 0.0


@METRICS.register("f1")
def f1(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (label index 1, e.g. MRPC's "Yes")."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = float(((pred == positive) & (gold == positive)).sum())
    fp = float(((pred == positive) & (gold != positive)).sum())
    fn = float(((pred != positive) & (gold == positive)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
