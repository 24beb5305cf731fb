"""Running a sweep from Python: :func:`sweep` starts one, :func:`resume_sweep` continues a stopped one.

Both return the sweep's :class:`~.table.SweepTable`, read back from its directory. The CLI's
``lmaas-tune sweep`` is a shell over these two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lmaas_tune.backends.factory import SERVICES
from lmaas_tune.errors import ConfigError

from .directory import SweepDirectory
from .engine import EngineOptions, check_address, require, run_trials
from .progress import SweepProgress
from .table import SweepTable, read_sweep
from .tracking import MlflowTracker, tracking_uri
from .trials import TrialSpec
from .worker import one_line

Progress = Callable[[SweepProgress], None]
log_ = logging.getLogger("lmaas_tune")


def sweep(
    trials: Sequence[TrialSpec],
    output: str | Path,
    *,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_concurrent: int | None = None,
    max_retries: int = 3,
    mlflow: str | None = None,
    progress: Progress | None = None,
    settings: Mapping[str, Any] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> SweepTable:
    """Run every trial into its own run directory under ``output`` (a new sweep directory) on Ray.

    ``address``: a Ray cluster to join (default: a local Ray on this machine's cores, or the one
    this process already joined). Each trial gets ``cpus_per_trial`` CPUs (and torch as many
    threads) and ``gpus_per_trial`` GPUs; at most ``max_concurrent`` run at once. A trial whose
    worker dies is run again up to ``max_retries`` times, continuing from its checkpoint; a trial
    that fails is reported in the table and the others go on. ``mlflow``: a tracking URI (a local
    path such as ``./mlruns`` for MLflow's file store) to log each trial to when it ends.
    ``settings`` and ``skipped`` are recorded in ``sweep.json`` (what the grid came from, which
    tasks were left out and why).
    """
    options = EngineOptions(address, cpus_per_trial, gpus_per_trial, max_concurrent, max_retries)
    check_extras(mlflow)
    check_address(address)
    mlflow = tracking_uri(mlflow) if mlflow is not None else None  # absolute: a resume may run elsewhere
    engine = {k: v for k, v in asdict(options).items() if k != "address"} | {"mlflow": mlflow}
    directory = SweepDirectory.create(output, trials, settings=settings, skipped=skipped, engine=engine)
    return _run(directory, options, mlflow, progress)


def resume_sweep(
    output: str | Path,
    *,
    address: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    max_retries: int | None = None,
    mlflow: str | None = None,
    endpoints: Sequence[str] | None = None,
    token_env: str | None = None,
    device: str | None = None,
    progress: Progress | None = None,
) -> SweepTable:
    """Continue the sweep in ``output``: run the trials that have not finished (each from its own
    checkpoint), skip the others. Options left out take the values the sweep was started with
    (except ``address``: without it, a local Ray).

    As ``lmaas-tune resume`` for one run, only what cannot change a result may change: the
    services' ``endpoints`` and ``token_env`` (trials of a remote or vLLM backend) and a local
    model's ``device``."""
    directory = SweepDirectory.open(output)
    stored = directory.engine

    def pick(given: Any, name: str, default: Any) -> Any:
        return given if given is not None else stored.get(name, default)

    options = EngineOptions(address, pick(cpus_per_trial, "cpus_per_trial", 1.0),
                            pick(gpus_per_trial, "gpus_per_trial", 0.0),
                            pick(max_concurrent, "max_concurrent", None), pick(max_retries, "max_retries", 3))
    mlflow = pick(mlflow, "mlflow", None)
    mlflow = tracking_uri(mlflow) if mlflow is not None else None
    check_extras(mlflow)
    check_address(address)
    return _run(directory, options, mlflow, progress, _moved(directory.trials, endpoints, token_env, device))


def _moved(trials: Sequence[TrialSpec], endpoints: Sequence[str] | None, token_env: str | None,
           device: str | None) -> tuple[TrialSpec, ...]:
    """The trials with their services' new addresses and token variable, and local models' new device."""
    served = [t for t in trials if t.backend.backend in SERVICES]
    if (endpoints or token_env) and not served:
        raise ConfigError("--endpoint and --token-env point a resumed sweep's trials at their services, but no trial "
                          "of this sweep uses one (they run local models); drop those options")
    if device and len(served) == len(trials):
        raise ConfigError("--device moves a resumed sweep's local models, but every trial uses a service; drop it")
    out = []
    for t in trials:
        if t.backend.backend in SERVICES:
            changes: dict[str, Any] = {"endpoints": tuple(endpoints)} if endpoints else {}
            if token_env is not None:
                changes["token_env"] = token_env
        else:
            changes = {"device": device} if device else {}
        out.append(replace(t, backend=replace(t.backend, **changes)) if changes else t)
    return tuple(out)


def check_extras(mlflow: str | None) -> None:
    """Fail before anything is written when an extra the sweep needs is missing."""
    require("ray", "ray", "lmaas-tune sweep (it runs its trials on Ray)")
    if mlflow is not None:
        require("mlflow", "mlflow", "--mlflow")


def _run(directory: SweepDirectory, options: EngineOptions, mlflow: str | None,
         progress: Progress | None, trials: Sequence[TrialSpec] | None = None) -> SweepTable:
    todo = [t for t in trials or directory.trials if not directory.finished(t.id)]
    tracker = MlflowTracker(mlflow, directory) if mlflow is not None else None
    if tracker is not None:  # trials that finished before a stop, not logged yet
        logged = tracker.logged()
        for trial in directory.trials:
            if directory.finished(trial.id) and trial.id not in logged:
                tracker.log(trial, _last_end(directory, trial))
    if todo:
        run_trials(directory, todo, options, on_progress=progress,
                   on_trial_end=_logger(tracker) if tracker is not None else None)
    return read_sweep(directory)


def _logger(tracker: MlflowTracker) -> Callable[[TrialSpec, Mapping[str, Any]], None]:
    """``tracker.log``, a failure of which is a warning: the sweep goes on, and a resume logs what is missing."""

    def log(trial: TrialSpec, end: Mapping[str, Any]) -> None:
        try:
            tracker.log(trial, end)
        except Exception as exc:  # MLflow's store went away, a full disk...: the trials matter more
            log_.warning("could not log %s to MLflow at %s (%s); `lmaas-tune sweep --resume` logs it later",
                         trial.id, tracker.uri, one_line(exc))

    return log


def _last_end(directory: SweepDirectory, trial: TrialSpec) -> dict[str, Any]:
    ends = [a for a in directory.attempts(trial.id) if a.get("event") != "start"]
    return {**(ends[-1] if ends else {}), "event": "finished"}
