"""Where a running sweep stands: trials done, running, failed, and the best dev metric so far."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from .directory import SweepDirectory
from .trials import TrialSpec


@dataclass(frozen=True)
class BestDev:
    value: float
    trial: str


@dataclass(frozen=True)
class SweepProgress:
    total: int
    done: int  # finished, this session or before
    failed: int
    running: int  # a worker has started it
    queued: int  # waiting for a worker (for free resources, or under --max-concurrent)
    best: BestDev | None

    def describe(self) -> str:
        best = "" if self.best is None else f"; best dev {self.best.value:.4f} ({self.best.trial})"
        return (f"trials: {self.done}/{self.total} done, {self.running} running, {self.queued} queued, "
                f"{self.failed} failed{best}")


def running(directory: SweepDirectory, trial_id: str, session: str) -> bool:
    """Whether a worker of this sweep session has started the trial and not ended it."""
    attempts = directory.attempts(trial_id)
    return bool(attempts) and attempts[-1].get("event") == "start" and attempts[-1].get("session") == session


def best_dev(directory: SweepDirectory, trials: Sequence[TrialSpec]) -> BestDev | None:
    """The highest dev metric any trial has reached so far (read from the run directories' histories)."""
    best: BestDev | None = None
    for trial in trials:
        path = directory.run_dir(trial.id) / "history.jsonl"
        try:
            lines = path.read_text("utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                value = json.loads(line).get("dev_metric")
            except ValueError:  # a line being written
                continue
            if value is not None and (best is None or float(value) > best.value):
                best = BestDev(float(value), trial.id)
    return best
