"""One trial, as a worker runs it: fit into the trial's run directory, or continue it from there.

:func:`run_trial` is the body of the Ray task (:mod:`.engine`); it imports nothing of Ray's at
module level and runs as well in a plain process. It is safe to run again after it was killed at
any point: a run directory with a record continues from its last checkpoint (the ``resume`` path
``lmaas-tune fit --resume`` takes), so a retried trial pays at most the generation it was in and
ends exactly as an uninterrupted one. A finished trial just returns.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from lmaas_tune.backends.factory import open_backend
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.runs.results import FitResult
from lmaas_tune.tuning import workflows

from .directory import ATTEMPTS, SweepDirectory
from .trials import TrialSpec


def one_line(exc: BaseException) -> str:
    """An error as one line: its type and message, whitespace folded."""
    text = re.sub(r"\s*\n\s*", " ", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def where() -> dict[str, Any]:
    """The node, host and process this code runs in."""
    node = None
    try:
        ray: Any = importlib.import_module("ray")
        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:  # not under Ray (or an older one): the host and pid say enough
        node = None
    return {"node_id": node, "host": socket.gethostname(), "pid": os.getpid()}


async def fit_or_resume(trial: TrialSpec, run_dir: Path) -> FitResult:
    """Fit ``trial`` into ``run_dir``, or continue the run already there."""
    backend = open_backend(trial.backend)
    async with backend:
        if RunConfig.exists(run_dir):
            return await workflows.resume(run_dir, backend)
        return await workflows.fit(trial.task, backend, trial.backend, trial.tune, output=run_dir,
                                   baseline=trial.baseline)


def run_trial(trial: dict[str, Any], sweep_dir: str, session: str, threads: int | None = None) -> dict[str, Any]:
    """Run one trial of the sweep in ``sweep_dir``; return how it ended (never raises for a failed fit).

    ``threads`` caps torch's intra-op threads (the CPUs the trial was given). Each start and end is
    appended to the trial's attempt log with where it ran; ``session`` names the sweep invocation.
    """
    spec = TrialSpec.from_dict(trial)
    directory = SweepDirectory.open(sweep_dir)
    with open(directory.path / ATTEMPTS / f"{spec.id}.lock", "a") as lock:
        # One attempt at a time: an earlier one that is still being torn down (its driver was killed)
        # holds the lock until its process is gone; the kernel releases it then.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _attempt(spec, directory, session, threads)


def _attempt(spec: TrialSpec, directory: SweepDirectory, session: str, threads: int | None) -> dict[str, Any]:
    attempt = 1 + sum(1 for a in directory.attempts(spec.id) if a.get("event") == "start")
    here = where()
    directory.log_attempt(spec.id, {"event": "start", "attempt": attempt, "session": session, "time": time.time(),
                                    **here})
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    status, error = "finished", None
    try:
        asyncio.run(fit_or_resume(spec, directory.run_dir(spec.id)))
    except Exception as exc:  # a failed trial is reported, and the others go on
        status, error = "failed", one_line(exc)
    end = {"event": status, "attempt": attempt, "session": session, "time": time.time(), "error": error, **here}
    directory.log_attempt(spec.id, end)
    return {"id": spec.id, **end}
