"""The jobs the CLI runs, as library calls: zero-shot evaluation, tuning, and re-scoring a saved run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend
from .backends.factory import BackendSettings, open_backend
from .config import TuneConfig
from .evaluation import Evaluation, evaluate_prompt
from .projection import Projection, ProjectionSpec
from .runs import RunDirectory
from .tasks.spec import TaskSpec
from .tuner import BlackBoxTuner, Event, FitResult

Progress = Callable[[int, int], None]


async def zero_shot(spec: TaskSpec, backend: Backend, *, progress: Progress | None = None) -> Evaluation:
    """The manual template (no soft prompt) on the task's test set."""
    task = spec.build()
    return await evaluate_prompt(backend, task, task.load("test"), None, progress=progress)


async def fit(
    spec: TaskSpec,
    backend: Backend,
    settings: BackendSettings,
    config: TuneConfig,
    *,
    output: str | Path | None,
    callbacks: Sequence[Callable[[Event], None]] = (),
    concurrency: int | None = None,
    baseline: bool = True,
) -> FitResult:
    """Tune a prompt with Black-Box Tuning and record the run in ``output``.

    With ``baseline``, the manual template alone is scored on the same test set too.
    """
    info = backend.info
    run_info = {
        "version": 1,
        "task": spec.to_dict(),
        "backend": settings.to_dict(),
        "model": {"id": info.model_id, "kind": info.kind.value, "hidden_size": info.hidden_size,
                  "dtype": info.dtype, "device": info.device},
    }
    tuner = BlackBoxTuner(spec.build(), backend, config, run_dir=output, run_info=run_info,
                          callbacks=callbacks, concurrency=concurrency, evaluate_manual=baseline)
    return await tuner.fit()


@dataclass(frozen=True)
class SavedRun:
    """A run directory read back: its task spec, backend settings and best prompt."""

    run: RunDirectory
    task: TaskSpec
    settings: BackendSettings
    projection: ProjectionSpec
    z: np.ndarray
    recorded_test: dict[str, Any] | None

    @classmethod
    def load(cls, path: str | Path) -> "SavedRun":
        run = RunDirectory.open(path)
        cfg, best = run.config, run.best
        recorded = run.result.get("test") if (run.path / "result.json").exists() else None
        return cls(run, TaskSpec.from_dict(cfg["task"]), BackendSettings.from_dict(cfg["backend"]),
                   ProjectionSpec(**best["projection"]), np.asarray(best["z"], dtype=np.float64), recorded)

    def prompt(self) -> np.ndarray:
        """The best soft prompt, rebuilt from z and the projection spec."""
        return Projection(self.projection)(self.z)[0]


async def evaluate_run(
    saved: SavedRun, backend: Backend | None = None, *, progress: Progress | None = None
) -> Evaluation:
    """Score a saved run's best prompt on its task's test set."""
    task = saved.task.build()
    own = backend is None
    backend = backend or open_backend(saved.settings)
    try:
        return await evaluate_prompt(backend, task, task.load("test"), saved.prompt(), progress=progress)
    finally:
        if own:
            await backend.aclose()
