"""What a finished fit produced: :class:`FitResult` and the test :class:`Evaluation` in it.

A finished run stores its result in ``result.json`` (and its best prompt in ``best.json``);
:func:`stored_result` reads them back, so a finished run can be shown again without scoring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmaas_tune.projection import AnySpec, build_projection, spec_from_dict

from .directory import RESULT, RunDirectory


@dataclass(frozen=True)
class Evaluation:
    metric: str
    value: float
    accuracy: float
    n: int
    dropped: int
    predictions: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "value": self.value, "accuracy": self.accuracy, "n": self.n, "dropped": self.dropped}


@dataclass(frozen=True)
class FitResult:
    best_z: np.ndarray
    projection: AnySpec
    metric: str
    dev: float
    #: the kept prompt's train loss; ``inf`` when it was never scored on the train set (the
    #: optimiser's centre, kept by a dev check with ``dev_candidates="best+mean"``); stored as null
    train_loss: float
    test: Evaluation | None
    manual: Evaluation | None
    calls: int
    wall_time: float
    ledger: dict[str, int]
    run_dir: Path | None = None
    initial_prompt: np.ndarray | None = None  # p0 (None: zeros)

    def prompt(self) -> np.ndarray:
        """The best soft prompt, rebuilt from ``best_z``, the projection and p0."""
        return build_projection(self.projection, self.initial_prompt)(self.best_z)[0]



def finite_or_none(x: float | None) -> float | None:
    """JSON has no infinity: a non-finite value is stored as null (read back by :func:`inf_if_none`)."""
    return float(x) if x is not None and math.isfinite(x) else None


def inf_if_none(x: float | None) -> float:
    """A loss stored by :func:`finite_or_none`: null reads as ``inf`` (not measured, or no finite loss)."""
    return math.inf if x is None else float(x)


def write_result(run: RunDirectory, result: FitResult, dropped: dict[str, int]) -> None:
    """Store ``result`` in the run directory: the run is finished."""
    test, manual = result.test, result.manual
    run.write_json(RESULT, {
        "metric": result.metric, "dev": result.dev, "train_loss": finite_or_none(result.train_loss),
        "test": test.to_dict() if test else None, "manual_prompt_test": manual.to_dict() if manual else None,
        "calls": result.calls, "wall_time_s": result.wall_time, "ledger": result.ledger, "dropped": dropped,
    })


def _evaluation(d: dict[str, Any] | None) -> Evaluation | None:
    if d is None:
        return None
    return Evaluation(d["metric"], float(d["value"]), float(d["accuracy"]), int(d["n"]), int(d["dropped"]), ())


def stored_result(run: RunDirectory) -> FitResult:
    """The result a finished run recorded (test predictions are not stored: empty)."""
    res, best = run.result, run.best
    return FitResult(np.asarray(best["z"], dtype=np.float64), spec_from_dict(best["projection"]), res["metric"],
                     float(res["dev"]), inf_if_none(res["train_loss"]), _evaluation(res.get("test")),
                     _evaluation(res.get("manual_prompt_test")), int(res["calls"]), float(res["wall_time_s"]),
                     dict(res["ledger"]), run.path, run.initial_prompt)


