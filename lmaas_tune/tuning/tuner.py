"""Black-Box Tuning: ask CMA-ES for z's, score A z on the few-shot train set, tell the losses.

Dev checks: whenever the charged calls reach a multiple of ``eval_every`` (and once more when the
budget is spent), the candidate with the lowest train loss since the previous check is scored on
the dev split (uncharged), with the optimiser's centre beside it when ``dev_candidates`` is
``"best+mean"``; the better of them becomes the run's best prompt only on a strictly better dev metric.
The final prompt is scored once on the test set.

Budgets that are not a multiple of the popsize end with a partial generation: only the calls
that are left are scored (and charged); that generation is not told to CMA-ES, since the run ends.

With a run directory, every generation ends with a checkpoint, and ``fit(resume=True)`` continues
a stopped run from its last one, ending exactly as the uninterrupted run would have; see
:mod:`lmaas_tune.runs.checkpoint` for the rule. Cancelling ``fit`` (``asyncio.CancelledError``, Ctrl-C)
leaves the run directory resumable.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lmaas_tune.backends.base import Backend
from lmaas_tune.errors import ConfigError, RunDirectoryError
from lmaas_tune.methods import METHODS, LOSSES, TuneConfig
from lmaas_tune.methods.optimizers import Optimizer
from lmaas_tune.projection import AnyProjection, AnySpec, build_projection
from lmaas_tune.runs.checkpoint import Candidate, LoopState, load_checkpoint, mark_stopped, save_checkpoint
from lmaas_tune.runs.directory import INITIAL_PROMPT, RunDirectory
from lmaas_tune.runs.record import ModelRecord, RunConfig
from lmaas_tune.runs.results import Evaluation, FitResult, finite_or_none, stored_result, write_result
from lmaas_tune.tasks.data import Example
from lmaas_tune.tasks.task import Task

from .evaluation import LabelledBatch, prepare, summarise
from .events import BudgetSpent, DevChecked, EvaluationProgress, Event, EventStream, GenerationReport
from .fewshot import FewShotSplit
from .ledger import BudgetLedger
from .scheduler import PopulationScheduler

log = logging.getLogger("lmaas_tune")


@dataclass
class _Session:
    """Everything one ``fit`` call works with."""

    run: RunDirectory | None
    train: LabelledBatch
    dev: LabelledBatch
    project: AnyProjection
    opt: Optimizer
    ledger: BudgetLedger
    scheduler: PopulationScheduler
    state: LoopState
    committed: dict[str, Any] | None = None  # the last checkpoint written or read
    discarded: dict[str, int] = field(default_factory=dict)

    @property
    def spec(self) -> AnySpec:
        return self.project.spec


class BlackBoxTuner:
    """Tunes a soft prompt for ``task`` on ``backend``; ``await tuner.fit()`` runs it."""

    def __init__(
        self,
        task: Task,
        backend: Backend,
        config: TuneConfig = TuneConfig(),
        *,
        run_dir: str | Path | None = None,
        record: RunConfig | None = None,
        concurrency: int | None = None,
        callbacks: Sequence[Callable[[Event], None]] = (),
        evaluate_test: bool = True,
        evaluate_manual: bool = False,
    ) -> None:
        self.task, self.backend, self.config = task, backend, config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.record = record
        self._run: RunDirectory | None = None  # an opened run to continue (from_run)
        self.concurrency = concurrency
        self.callbacks = list(callbacks)
        self.evaluate_test = evaluate_test
        self.evaluate_manual = evaluate_manual
        self._test_examples: list[Example] | None = None

    @classmethod
    def from_run(cls, run: str | Path | RunDirectory, backend: Backend, **kwargs: Any) -> "BlackBoxTuner":
        """A tuner for the run stored in ``run`` (a path, or a :class:`RunDirectory` already opened):
        task, settings and baseline come from its record. Continue it with ``fit(resume=True)``."""
        run = run if isinstance(run, RunDirectory) else RunDirectory.open(run)
        record = run.record
        if record.task is None:
            raise RunDirectoryError(f"the record of {run.path} does not describe its task; resume it with "
                                    f"BlackBoxTuner(task, backend, config, run_dir=...).fit(resume=True)")
        kwargs.setdefault("evaluate_manual", record.baseline)
        tuner = cls(record.task.build(), backend, record.tune, run_dir=run.path, record=record, **kwargs)
        tuner._run = run
        return tuner

    #: the earlier name of :meth:`from_run`
    from_run_dir = from_run

    @classmethod
    async def resume(cls, run_dir: str | Path | RunDirectory, backend: Backend, **kwargs: Any) -> FitResult:
        """Continue the run stored in ``run_dir`` (a finished run just returns its result)."""
        return await cls.from_run(run_dir, backend, **kwargs).fit(resume=True)

    def _emit(self, event: Event) -> None:
        for cb in self.callbacks:
            cb(event)

    def stream(self, *, resume: bool = False) -> "EventStream[Event, FitResult]":
        """``fit`` in a task of its own, as an async iterator of its events ending with the result::

            async with tuner.stream() as events:
                async for item in events:
                    if isinstance(item, FitResult): ...

        Leaving the block early cancels the fit (its run directory stays resumable).
        """

        async def job(emit: Callable[[Event], None]) -> FitResult:
            self.callbacks.append(emit)
            try:
                return await self.fit(resume=resume)
            finally:
                self.callbacks.remove(emit)

        return EventStream(job)

    async def fit(self, *, resume: bool = False) -> FitResult:
        """Run the tuning; with ``resume``, continue the run in ``run_dir`` from its last checkpoint."""
        run = self._open_run(resume) if resume else None
        if run is not None and run.finished:
            return stored_result(run)
        if self.evaluate_test:  # a broken test file fails now, not after the tuning
            self._test_examples = self.task.load("test")
        s = await self._prepare()  # data problems surface before a new run directory is made
        if run is None and self.run_dir is not None:
            run = self._open_run(resume=False)
        if run is not None:
            self._attach(s, run)
        start = time.perf_counter() - s.state.elapsed
        try:
            while s.ledger.remaining > 0:
                report = await self._generation(s, start)
                if run is not None:
                    run.append_history(report.to_record())
                    s.committed = save_checkpoint(run, s.state, s.ledger, s.opt, s.spec, s.discarded)
                if report.dev_metric is not None and report.best_dev is not None:
                    self._emit(DevChecked(report.generation, report.calls, self.task.metric, report.dev_metric,
                                          report.best_dev, s.state.best_generation == report.generation))
                self._emit(report)
            self._emit(BudgetSpent(s.ledger.calls, s.ledger.budget, s.state.generation, s.state.elapsed))
            return await self._finish(s, start)
        except BaseException as exc:
            if run is not None and s.committed is not None and not run.finished:
                mark_stopped(run, s.committed, s.ledger, _reason(exc))
            raise
        finally:
            s.opt.close()  # an optimiser's worker thread (COBYLA's) ends with the fit

    def _open_run(self, resume: bool) -> RunDirectory | None:
        if self.run_dir is None:
            if resume:
                raise ConfigError("resuming needs the run directory (run_dir) of the stopped run")
            return None
        if not resume:
            return RunDirectory.create(self.run_dir, self._new_record())
        run = self._run if self._run is not None else RunDirectory.open(self.run_dir)
        stored = run.record.tune
        if stored != self.config:
            mine, theirs = self.config.to_dict(), stored.to_dict()
            diff = ", ".join(f"{k} {theirs[k]!r} (given {mine[k]!r})" for k in mine if mine[k] != theirs[k])
            raise ConfigError(f"the run in {run.path} was tuned with other settings: {diff}; "
                              f"a resumed run keeps its stored settings")
        return run

    def _new_record(self) -> RunConfig:
        """What a new run directory records: the caller's record (task, backend...), with this
        tuner's settings, model and baseline flag."""
        record = self.record or RunConfig(tune=self.config)
        return replace(record, tune=self.config, baseline=self.evaluate_manual,
                       model=record.model or ModelRecord.of(self.backend.info))

    async def _prepare(self) -> _Session:
        """The few-shot data, the projection and a fresh optimiser and ledger."""
        cfg, backend, task = self.config, self.backend, self.task
        split = FewShotSplit.draw(task.load("train"), cfg.k_shot, cfg.seed, task.num_labels)
        train = await prepare(backend, task, split.train, cfg.prompt_length, what="train examples", on_long=cfg.on_long)
        dev = await prepare(backend, task, split.dev, cfg.prompt_length, what="dev examples", on_long=cfg.on_long)
        method = METHODS.get(cfg.method)
        base = await method.initial_prompt(cfg, backend)
        space = method.space(cfg, await method.projection_spec(cfg, backend, train.batch), base)
        ledger = BudgetLedger(cfg.budget)
        return _Session(None, train, dev, space.projection, space.optimizer, ledger,
                        PopulationScheduler(backend, ledger, concurrency=self.concurrency, events=self._emit),
                        LoopState(next_check=cfg.eval_every))

    def _attach(self, s: _Session, run: RunDirectory) -> None:
        """Bind the session to ``run``: continue from its last checkpoint, or write the first one."""
        s.run, spec, ledger = run, s.spec, s.ledger
        saved = load_checkpoint(run)
        if saved is None:  # a new run, or one stopped before its first checkpoint
            run.rewind_history(0)
            run.clear_best()
            run.save_initial_prompt(s.project.base_prompt)
            s.committed = save_checkpoint(run, s.state, s.ledger, s.opt, spec, s.discarded)
            return
        stored, base = saved.projection(spec), run.initial_prompt  # the run's own p0, bit for bit
        if stored != spec or not _same(base, s.project.base_prompt):
            s.project = build_projection(stored, base)
        saved.restore(s.state, s.ledger, s.opt)
        s.committed, s.discarded = saved.doc, saved.discarded
        run.rewind_history(s.state.generation)
        st = s.state
        if st.best is not None and st.best_dev is not None and st.best_generation is not None:
            run.save_best(self._best_record(st.best, st.best_dev, s.project, st.best_generation), s.project(st.best.z)[0])
        else:
            run.clear_best()
        log.info("resuming %s after generation %d (%d of %d calls)", run.path, st.generation, ledger.calls, ledger.budget)

    async def _generation(self, s: _Session, start: float) -> GenerationReport:
        cfg, st, ledger = self.config, s.state, s.ledger
        population = s.opt.ask()
        n = ledger.reserve(len(population))
        zs = np.asarray(population[:n])
        scores = await s.scheduler.evaluate(s.project(zs), s.train.batch, z=zs, projection=s.project)
        logits = s.train.class_scores(scores)  # [P, N, C]: the label words grouped into labels
        losses = LOSSES.get(cfg.loss)(logits, s.train.labels)
        if n == len(population):
            s.opt.tell(population, losses)
        st.generation += 1
        finite = np.where(np.isfinite(losses), losses, np.inf)
        i = int(np.argmin(finite))
        st.best_loss = min(st.best_loss, float(finite[i]))
        if st.pending is None or finite[i] < st.pending.loss:
            st.pending = Candidate(np.array(population[i]), float(finite[i]), ledger.calls)
        dev_value = None
        if st.pending is not None and (ledger.calls >= st.next_check or ledger.remaining == 0):
            checked, dev_value = await self._dev_check(s, st.pending)
            if st.best_dev is None or dev_value > st.best_dev:
                st.best, st.best_dev, st.best_generation = checked, dev_value, st.generation
                if s.run is not None:
                    s.run.save_best(self._best_record(st.best, dev_value, s.project, st.generation), s.project(st.best.z)[0])
            st.pending = None
            st.next_check = (ledger.calls // cfg.eval_every + 1) * cfg.eval_every
        st.elapsed = time.perf_counter() - start
        return GenerationReport(
            generation=st.generation, calls=ledger.calls, budget=cfg.budget,
            loss_min=float(np.nanmin(losses)), loss_mean=float(np.nanmean(losses)), loss_max=float(np.nanmax(losses)),
            best_loss=st.best_loss, train_accuracy=float((logits[i].argmax(-1) == s.train.labels).mean()),
            dev_metric=dev_value, best_dev=st.best_dev, elapsed=st.elapsed,
            calls_per_s=ledger.calls / st.elapsed if st.elapsed > 0 else 0.0,
        )

    async def _finish(self, s: _Session, start: float) -> FitResult:
        st, ledger, run, task = s.state, s.ledger, s.run, self.task
        best, best_dev = st.best, st.best_dev
        assert best is not None and best_dev is not None
        test_eval = manual = None
        if self.evaluate_test:
            prompt = s.project(best.z)[0]
            examples = self._test_examples if self._test_examples is not None else self.task.load("test")
            # One prepared test set for both, so the manual prompt is scored on exactly the examples
            # the tuned prompt was (inputs dropped as too long with the prompt are dropped for both).
            data = await prepare(self.backend, task, examples, prompt.shape[-2], what="test examples",
                                 on_long=self.config.on_long)
            test_eval = await self._test(s.scheduler, prompt, data)
            if self.evaluate_manual:
                manual = await self._test(s.scheduler, None, data)
        wall = time.perf_counter() - start
        result = FitResult(best.z, s.spec, task.metric, best_dev, best.loss, test_eval, manual, ledger.calls, wall,
                           ledger.to_dict(), run.path if run else None, s.project.base_prompt)
        if run is not None:
            write_result(run, result, {"train": s.train.dropped, "dev": s.dev.dropped})
        return result

    async def _dev_check(self, s: _Session, pending: Candidate) -> tuple[Candidate, float]:
        """The candidate a dev check keeps, and its dev metric: ``pending`` or, with
        ``dev_candidates="best+mean"``, the optimiser's centre if that scores strictly better (its
        train loss is not measured: ``inf``, stored as null). One uncharged pass scores both."""
        center = s.opt.center() if self.config.dev_candidates == "best+mean" else None
        zs = np.stack([pending.z] if center is None else [pending.z, center])
        scores = await s.scheduler.evaluate(s.project(zs), s.dev.batch, charged=False, z=zs, projection=s.project)
        values = [summarise(row, s.dev, self.task.metric).value for row in scores]
        if center is not None and values[1] > values[0]:
            return Candidate(np.array(center), math.inf, s.ledger.calls), values[1]
        return pending, values[0]

    async def _test(self, scheduler: PopulationScheduler, prompt: np.ndarray | None, data: LabelledBatch) -> Evaluation:
        """Score ``prompt`` (``None``: the manual template alone) on the prepared test set (uncharged)."""
        what = "test" if prompt is not None else "manual"
        scores = await scheduler.score_examples(
            prompt, data.batch, progress=lambda d, t: self._emit(EvaluationProgress(d, t, what)))
        return summarise(scores, data, self.task.metric)

    @staticmethod
    def _best_record(best: Candidate, dev: float, project: AnyProjection, generation: int) -> dict[str, Any]:
        return {"z": [float(x) for x in best.z], "projection": project.spec.to_dict(), "dev": dev,
                "initial_prompt": None if project.base_prompt is None else INITIAL_PROMPT,
                "train_loss": finite_or_none(best.loss), "found_at_calls": best.calls, "checked_at_generation": generation}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt"
    return f"{type(exc).__name__}: {exc}"


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))
