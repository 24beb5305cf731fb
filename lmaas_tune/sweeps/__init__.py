"""Sweeps: a grid of fits run on Ray, each into its own run directory, read back as one table.

:func:`grid` builds the trials, :func:`sweep` runs them (:func:`resume_sweep` continues a stopped
sweep), :func:`read_sweep` reads any sweep directory back as a :class:`SweepTable`. Ray and MLflow
are imported only when a sweep runs (the ``ray`` and ``mlflow`` extras). See docs/sweeps.md.
"""

from .directory import SweepDirectory
from .engine import EngineOptions
from .trials import PAPER_SEEDS, PAPER_TASKS, TrialSpec, expand, grid, trial_id
from .progress import BestDev, SweepProgress
from .runner import resume_sweep, sweep
from .table import SweepRow, SweepTable, TrialOutcome, read_sweep

__all__ = ["PAPER_SEEDS", "PAPER_TASKS", "BestDev", "EngineOptions", "SweepDirectory", "SweepProgress", "SweepRow",
           "SweepTable", "TrialOutcome", "TrialSpec", "expand", "grid", "read_sweep", "resume_sweep", "sweep",
           "trial_id"]
