"""The seeded true-few-shot split."""

from __future__ import annotations

from collections import Counter

import pytest

from lmaas_tune.errors import DataError
from lmaas_tune.tuning.fewshot import FewShotSplit
from lmaas_tune.tasks import Example, get_task


def _pool(per_class: tuple[int, ...]) -> list[Example]:
    pool = []
    for label, n in enumerate(per_class):
        pool += [Example({"sentence": f"class {label} example {i}"}, label) for i in range(n)]
    return pool


def _texts(examples) -> list[str]:
    return [e.texts["sentence"] for e in examples]


def test_deterministic_for_a_seed() -> None:
    pool = _pool((40, 30, 50))
    a = FewShotSplit.draw(pool, 4, seed=42, num_labels=3)
    b = FewShotSplit.draw(list(pool), 4, seed=42, num_labels=3)
    assert _texts(a.train) == _texts(b.train) and _texts(a.dev) == _texts(b.dev)
    assert (a.k, a.seed) == (4, 42)


def test_another_seed_draws_another_split() -> None:
    pool = _pool((40, 30, 50))
    a = FewShotSplit.draw(pool, 4, seed=42, num_labels=3)
    b = FewShotSplit.draw(pool, 4, seed=43, num_labels=3)
    assert set(_texts(a.train)) != set(_texts(b.train))
    assert set(_texts(a.dev)) != set(_texts(b.dev))


@pytest.mark.parametrize(("k", "seed"), [(1, 0), (4, 1), (16, 42)])
def test_class_balanced_and_disjoint(k: int, seed: int) -> None:
    pool = _pool((40, 35, 60, 33))
    split = FewShotSplit.draw(pool, k, seed=seed, num_labels=4)
    assert Counter(e.label for e in split.train) == {c: k for c in range(4)}
    assert Counter(e.label for e in split.dev) == {c: k for c in range(4)}
    assert not set(_texts(split.train)) & set(_texts(split.dev))
    assert len(set(_texts(split.train))) == len(split.train)  # no example drawn twice
    assert set(_texts(split.train)) | set(_texts(split.dev)) <= set(_texts(pool))


def test_shuffled_not_just_the_first_rows() -> None:
    pool = _pool((100, 100))
    split = FewShotSplit.draw(pool, 5, seed=42, num_labels=2)
    firsts = {f"class {c} example {i}" for c in range(2) for i in range(10)}
    assert set(_texts(split.train)) | set(_texts(split.dev)) != firsts
    # classes are interleaved in the shuffled order, not grouped by label
    labels = [e.label for e in split.train]
    assert labels != sorted(labels)


def test_exactly_2k_per_class_is_enough() -> None:
    split = FewShotSplit.draw(_pool((6, 6)), 3, seed=5, num_labels=2)
    assert len(split.train) == len(split.dev) == 6


def test_too_few_per_class_is_an_error() -> None:
    with pytest.raises(DataError, match="label 1: 7") as err:
        FewShotSplit.draw(_pool((40, 7, 40)), 4, seed=42, num_labels=3)
    assert "need 8" in str(err.value)
    with pytest.raises(DataError, match="label 2: 0"):
        FewShotSplit.draw(_pool((10, 10)), 2, seed=42, num_labels=3)  # a class with no examples
    with pytest.raises(DataError, match=">= 1"):
        FewShotSplit.draw(_pool((10, 10)), 0, seed=42, num_labels=2)


def test_shipped_sst2_split() -> None:
    task = get_task("sst2")
    split = FewShotSplit.draw(task.load("train"), 16, seed=42, num_labels=2)
    assert Counter(e.label for e in split.train) == {0: 16, 1: 16}
    assert Counter(e.label for e in split.dev) == {0: 16, 1: 16}
    again = FewShotSplit.draw(task.load("train"), 16, seed=42, num_labels=2)
    assert split.train == again.train and split.dev == again.dev
