"""A run directory read back for using its prompt: ``evaluate RUN_DIR`` and ``predict RUN_DIR``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmaas_tune.backends.base import BackendInfo
from lmaas_tune.backends.factory import BackendSettings
from lmaas_tune.errors import RunDirectoryError
from lmaas_tune.projection import AnySpec, build_projection, spec_from_dict
from lmaas_tune.tasks.spec import TaskSpec

from .directory import RunDirectory


@dataclass(frozen=True)
class SavedRun:
    """A run directory read back: its task spec, backend settings and best prompt."""

    run: RunDirectory
    task: TaskSpec
    settings: BackendSettings
    projection: AnySpec
    z: np.ndarray
    recorded_test: dict[str, Any] | None
    initial_prompt: np.ndarray | None = None  # p0 (None: zeros)

    @classmethod
    def load(cls, path: str | Path | RunDirectory) -> "SavedRun":
        run = path if isinstance(path, RunDirectory) else RunDirectory.open(path)
        record = run.record
        if record.task is None or record.backend is None:
            raise RunDirectoryError(f"{run.path} does not record its task and backend (it was made by the library "
                                    f"without them); score its prompt from Python instead")
        best = run.best
        recorded = run.result.get("test") if run.finished else None
        return cls(run, record.task, record.backend, spec_from_dict(best["projection"]),
                   np.asarray(best["z"], dtype=np.float64), recorded, run.initial_prompt)

    def check_model(self, info: BackendInfo) -> None:
        """Refuse a backend serving another model than the one the run was tuned on."""
        if self.run.record.model is not None:
            self.run.record.model.check(info, str(self.run.path))

    def prompt(self) -> np.ndarray:
        """The best soft prompt (``[L, D]``, or ``[layers, L, D]`` for a deep run), rebuilt from z, the
        projection spec and the run's initial prompt."""
        return build_projection(self.projection, self.initial_prompt)(self.z)[0]
