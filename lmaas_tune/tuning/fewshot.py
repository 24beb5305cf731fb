"""The seeded "true few-shot" split: k train and k dev examples per class from the train pool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmaas_tune.errors import DataError
from lmaas_tune.tasks.data import Example


@dataclass(frozen=True)
class FewShotSplit:
    """``train`` and ``dev``: k examples per class each, disjoint, drawn with ``seed``.

    The pool is shuffled with the seed; walking it in that order, the first k examples of each
    class go to train and the next k to dev. Both keep the shuffled order.
    """

    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    k: int
    seed: int

    @classmethod
    def draw(cls, pool: Sequence[Example], k: int, seed: int, num_labels: int) -> "FewShotSplit":
        if k < 1:
            raise DataError(f"k-shot must be >= 1; got {k}")
        order = np.random.default_rng(seed).permutation(len(pool))
        train: list[Example] = []
        dev: list[Example] = []
        seen = [0] * num_labels
        for i in order:
            ex = pool[int(i)]
            c = seen[ex.label]
            if c < k:
                train.append(ex)
            elif c < 2 * k:
                dev.append(ex)
            else:
                continue
            seen[ex.label] += 1
            if len(dev) == k * num_labels:
                break
        short = [c for c in range(num_labels) if seen[c] < 2 * k]
        if short:
            counts = ", ".join(f"label {c}: {seen[c]}" for c in short)
            raise DataError(
                f"too few training examples for {k}-shot train + {k}-shot dev ({counts}; need {2 * k} "
                f"per label); lower --k-shot or add data"
            )
        return cls(tuple(train), tuple(dev), k, seed)
