"""The jobs the CLI runs, as library calls: zero-shot evaluation, tuning, resuming a stopped run,
and re-scoring a saved run. Each scoring goes through the scheduler (:mod:`.scheduler`); pass a
``ledger`` to see what it cost."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from lmaas_tune.backends.base import Backend
from lmaas_tune.backends.factory import BackendSettings, open_backend
from lmaas_tune.methods import TuneConfig
from lmaas_tune.runs.directory import RunDirectory
from lmaas_tune.runs.record import ModelRecord, RunConfig, data_fingerprint
from lmaas_tune.runs.results import Evaluation, FitResult
from lmaas_tune.runs.saved import SavedRun
from lmaas_tune.tasks.spec import TaskSpec

from .evaluation import evaluate_prompt
from .events import Event
from .ledger import BudgetLedger
from .tuner import BlackBoxTuner

Progress = Callable[[int, int], None]


async def zero_shot(spec: TaskSpec, backend: Backend, *, progress: Progress | None = None, on_long: str = "drop",
                    ledger: BudgetLedger | None = None) -> Evaluation:
    """The manual template (no soft prompt) on the task's test set."""
    task = spec.build()
    return await evaluate_prompt(backend, task, task.load("test"), None, progress=progress, on_long=on_long,
                                 ledger=ledger)


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
    task = spec.build()
    record = RunConfig(tune=config, task=spec, backend=settings, model=ModelRecord.of(backend.info),
                       baseline=baseline, data=data_fingerprint(task))
    tuner = BlackBoxTuner(task, backend, config, run_dir=output, record=record,
                          callbacks=callbacks, concurrency=concurrency, evaluate_manual=baseline)
    return await tuner.fit()


async def resume(
    run: str | Path | RunDirectory,
    backend: Backend,
    *,
    callbacks: Sequence[Callable[[Event], None]] = (),
    concurrency: int | None = None,
) -> FitResult:
    """Continue a stopped run from its last checkpoint, with its stored task and settings.

    ``run`` is its directory, or the :class:`RunDirectory` already opened. Refused when
    ``backend`` serves another model, or the task's data files changed since the run started. A
    finished run just returns its recorded result.
    """
    run = run if isinstance(run, RunDirectory) else RunDirectory.open(run)
    tuner = BlackBoxTuner.from_run(run, backend, callbacks=callbacks, concurrency=concurrency)
    if not run.finished:
        record = run.record
        if record.model is not None:
            record.model.check(backend.info, str(run.path))
        record.check_data(tuner.task, str(run.path))
    return await tuner.fit(resume=True)


async def evaluate_run(
    saved: SavedRun, backend: Backend | None = None, *, progress: Progress | None = None, on_long: str = "drop",
    ledger: BudgetLedger | None = None,
) -> Evaluation:
    """Score a saved run's best prompt on its task's test set."""
    task = saved.task.build()
    own = backend is None
    backend = backend or open_backend(saved.settings)
    try:
        saved.check_model(backend.info)
        return await evaluate_prompt(backend, task, task.load("test"), saved.prompt(), progress=progress,
                                     on_long=on_long, ledger=ledger)
    finally:
        if own:
            await backend.aclose()
