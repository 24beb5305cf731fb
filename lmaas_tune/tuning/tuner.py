"""Black-Box Tuning: ask CMA-ES for z's, score A z on the few-shot train set, tell the losses.

Dev checks: whenever the charged calls reach a multiple of ``eval_every`` (and once more when the
budget is spent), the candidate with the lowest train loss since the previous check is scored on
the dev split (uncharged); it becomes the run's best prompt only on a strictly better dev metric.
The final prompt is scored once on the test set.

Budgets that are not a multiple of the popsize end with a partial generation: only the calls
that are left are scored (and charged); that generation is not told to CMA-ES, since the run ends.

With a run directory, every generation ends with a checkpoint, and ``fit(resume=True)`` continues
a stopped run from its last one, ending exactly as the uninterrupted run would have; see
:mod:`lmaas_tune.checkpoint` for the rule. Cancelling ``fit`` (``asyncio.CancelledError``, Ctrl-C)
leaves the run directory resumable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend
from .checkpoint import Candidate, LoopState, load_checkpoint, mark_stopped, save_checkpoint, test_hook
from .config import TuneConfig
from .errors import ConfigError, RunDirectoryError
from .events import BudgetSpent, DevChecked, EventStream, Retry
from .evaluation import Evaluation, LabelledBatch, prepare, score_in_chunks, summarise
from .fewshot import FewShotSplit
from .ledger import BudgetLedger
from .losses import LOSSES
from .deep_projection import build_projection, spec_from_dict
from .methods import METHODS, AnyProjection, AnySpec
from .optimizers import Optimizer
from .runs import INITIAL_PROMPT, RESULT, RunDirectory
from .scheduler import PopulationScheduler
from .tasks.data import Example
from .tasks.task import Task

log = logging.getLogger("lmaas_tune")


@dataclass(frozen=True)
class GenerationReport:
    """What one generation did; also the run's history record."""

    generation: int
    calls: int
    budget: int
    loss_min: float
    loss_mean: float
    loss_max: float
    best_loss: float
    train_accuracy: float
    dev_metric: float | None
    best_dev: float | None
    elapsed: float
    calls_per_s: float

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvaluationProgress:
    """Progress of a final test evaluation (``what``: "test" for the tuned prompt, "manual" for none)."""

    done: int
    total: int
    what: str = "test"


Event = GenerationReport | EvaluationProgress | DevChecked | Retry | BudgetSpent


@dataclass(frozen=True)
class FitResult:
    best_z: np.ndarray
    projection: AnySpec
    metric: str
    dev: float
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
        run_info: dict[str, Any] | None = None,
        concurrency: int | None = None,
        callbacks: Sequence[Callable[[Event], None]] = (),
        evaluate_test: bool = True,
        evaluate_manual: bool = False,
    ) -> None:
        self.task, self.backend, self.config = task, backend, config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_info = dict(run_info or {})
        self.concurrency = concurrency
        self.callbacks = list(callbacks)
        self.evaluate_test = evaluate_test
        self.evaluate_manual = evaluate_manual
        self._test_examples: list[Example] | None = None

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, backend: Backend, **kwargs: Any) -> "BlackBoxTuner":
        """A tuner for the run stored in ``run_dir`` (by the CLI or :func:`lmaas_tune.workflows.fit`):
        task, settings and baseline come from its ``config.json``. Continue it with ``fit(resume=True)``."""
        from .tasks.spec import TaskSpec

        run = RunDirectory.open(run_dir)
        stored = run.config
        if "task" not in stored or "tune" not in stored:
            raise RunDirectoryError(f"{run.path / 'config.json'} does not describe its task; resume it with "
                                    f"BlackBoxTuner(task, backend, config, run_dir=...).fit(resume=True)")
        kwargs.setdefault("evaluate_manual", bool(stored.get("baseline", False)))
        return cls(TaskSpec.from_dict(stored["task"]).build(), backend, TuneConfig.from_dict(stored["tune"]),
                   run_dir=run.path, run_info={k: v for k, v in stored.items() if k != "tune"}, **kwargs)

    @classmethod
    async def resume(cls, run_dir: str | Path, backend: Backend, **kwargs: Any) -> FitResult:
        """Continue the run stored in ``run_dir`` (a finished run just returns its result)."""
        return await cls.from_run_dir(run_dir, backend, **kwargs).fit(resume=True)

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
                    test_hook("history", report.generation)
                    s.committed = save_checkpoint(run, s.state, s.ledger, s.opt, s.spec, s.discarded)
                if report.dev_metric is not None and report.best_dev is not None:
                    self._emit(DevChecked(report.generation, report.calls, self.task.metric, report.dev_metric,
                                          report.best_dev, s.state.best_generation == report.generation))
                self._emit(report)
            self._emit(BudgetSpent(s.ledger.calls, s.ledger.budget, s.state.generation, s.state.elapsed))
            if run is not None:
                test_hook("evaluate", s.state.generation)
            return await self._finish(s, start)
        except BaseException as exc:
            if run is not None and s.committed is not None and not run.finished:
                mark_stopped(run, s.committed, s.ledger, _reason(exc))
            raise

    def _open_run(self, resume: bool) -> RunDirectory | None:
        if self.run_dir is None:
            if resume:
                raise ConfigError("resuming needs the run directory (run_dir) of the stopped run")
            return None
        if not resume:
            return RunDirectory.create(self.run_dir, {**self.run_info, "tune": self.config.to_dict()})
        run = RunDirectory.open(self.run_dir)
        stored = TuneConfig.from_dict(run.config.get("tune") or {})
        if stored != self.config:
            mine, theirs = self.config.to_dict(), stored.to_dict()
            diff = ", ".join(f"{k} {theirs[k]!r} (given {mine[k]!r})" for k in mine if mine[k] != theirs[k])
            raise ConfigError(f"the run in {run.path} was tuned with other settings: {diff}; "
                              f"a resumed run keeps its stored settings")
        return run

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
        logits = await s.scheduler.evaluate(s.project(zs), s.train.batch, z=zs, projection=s.project)
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
            dev_value = await self._dev_metric(s.scheduler, s.project, st.pending.z, s.dev)
            if st.best_dev is None or dev_value > st.best_dev:
                st.best, st.best_dev, st.best_generation = st.pending, dev_value, st.generation
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
            test_eval = await self._test(prompt, data)
            if self.evaluate_manual:
                manual = await self._test(None, data)
        wall = time.perf_counter() - start
        result = FitResult(best.z, s.spec, task.metric, best_dev, best.loss, test_eval, manual, ledger.calls, wall,
                           ledger.to_dict(), run.path if run else None, s.project.base_prompt)
        if run is not None:
            run.write_json(RESULT, {
                "metric": task.metric, "dev": best_dev, "train_loss": best.loss,
                "test": test_eval.to_dict() if test_eval else None,
                "manual_prompt_test": manual.to_dict() if manual else None, "calls": ledger.calls,
                "wall_time_s": wall, "ledger": ledger.to_dict(),
                "dropped": {"train": s.train.dropped, "dev": s.dev.dropped},
            })
        return result

    async def _dev_metric(self, scheduler: PopulationScheduler, project: AnyProjection, z: np.ndarray, dev: LabelledBatch) -> float:
        zs = np.atleast_2d(z)
        logits = await scheduler.evaluate(project(zs), dev.batch, charged=False, z=zs, projection=project)
        return summarise(logits[0], dev, self.task.metric).value

    async def _test(self, prompt: np.ndarray | None, data: LabelledBatch) -> Evaluation:
        """Score ``prompt`` (``None``: the manual template alone) on the prepared test set."""
        logits = await score_in_chunks(
            self.backend, prompt, data,
            progress=lambda d, t: self._emit(EvaluationProgress(d, t, "test" if prompt is not None else "manual")),
        )
        return summarise(logits, data, self.task.metric)

    @staticmethod
    def _best_record(best: Candidate, dev: float, project: AnyProjection, generation: int) -> dict[str, Any]:
        return {"z": [float(x) for x in best.z], "projection": project.spec.to_dict(), "dev": dev,
                "initial_prompt": None if project.base_prompt is None else INITIAL_PROMPT,
                "train_loss": best.loss, "found_at_calls": best.calls, "checked_at_generation": generation}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt"
    return f"{type(exc).__name__}: {exc}"


def _evaluation(d: dict[str, Any] | None) -> Evaluation | None:
    if d is None:
        return None
    return Evaluation(d["metric"], float(d["value"]), float(d["accuracy"]), int(d["n"]), int(d["dropped"]), ())


def stored_result(run: RunDirectory) -> FitResult:
    """The result a finished run recorded (test predictions are not stored: empty)."""
    res, best = run.result, run.best
    return FitResult(np.asarray(best["z"], dtype=np.float64), spec_from_dict(best["projection"]), res["metric"],
                     float(res["dev"]), float(res["train_loss"]), _evaluation(res.get("test")),
                     _evaluation(res.get("manual_prompt_test")), int(res["calls"]), float(res["wall_time_s"]),
                     dict(res["ledger"]), run.path, run.initial_prompt)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))
