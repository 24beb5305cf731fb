"""Losses over label scores: ``(logits [P, N, C], labels [N]) -> [P]`` (lower is better).

``C`` is the number of labels: with several words per label, the caller first pools each label's
word scores (:meth:`lmaas_tune.tasks.verbalizer.Verbalizer.aggregate`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lmaas_tune.registry import Registry

Loss = Callable[[np.ndarray, np.ndarray], np.ndarray]
LOSSES: Registry[Loss] = Registry("loss")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@LOSSES.register("ce", aliases=("cross-entropy", "crossentropy"))
def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean cross-entropy of the softmax over the label words."""
    lp = _log_softmax(logits)
    return -np.take_along_axis(lp, labels[None, :, None], axis=-1)[..., 0].mean(axis=1)


HINGE_MARGIN = 2.0


@LOSSES.register("hinge")
def hinge(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Multi-class margin loss, margin 2: mean over examples of sum_{c != y} max(0, 2 - x_y + x_c) / C."""
    x = logits.astype(np.float64)
    true = np.take_along_axis(x, labels[None, :, None], axis=-1)
    margins = np.maximum(0.0, HINGE_MARGIN - true + x)
    num_classes = x.shape[-1]
    onehot = np.eye(num_classes, dtype=bool)[labels][None]
    margins = np.where(onehot, 0.0, margins)
    return (margins.sum(axis=-1) / num_classes).mean(axis=1)


@LOSSES.register("acc", aliases=("accuracy", "neg-accuracy", "-accuracy"))
def neg_accuracy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Minus the accuracy (ties go to the first label word)."""
    return -(logits.argmax(axis=-1) == labels[None]).mean(axis=1).astype(np.float64)


def predictions(logits: np.ndarray) -> np.ndarray:
    return logits.argmax(axis=-1)
