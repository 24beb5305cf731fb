"""Black-Box Tuning: ask CMA-ES for z's, score A z on the few-shot train set, tell the losses.

Dev checks: whenever the charged calls reach a multiple of ``eval_every`` (and once more when the
budget is spent), the candidate with the lowest train loss since the previous check is scored on
the dev split (uncharged); it becomes the run's best prompt only on a strictly better dev metric.
The final prompt is scored once on the test set.

Budgets that are not a multiple of the popsize end with a partial generation: only the calls
that are left are scored (and charged); that generation is not told to CMA-ES, since the run ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend
from .config import TuneConfig
from .evaluation import Evaluation, LabelledBatch, prepare, score_in_chunks, summarise
from .fewshot import FewShotSplit
from .ledger import BudgetLedger
from .losses import LOSSES
from .optimizers import CMAES
from .projection import Projection, ProjectionSpec
from .runs import RESULT, RunDirectory
from .scheduler import PopulationScheduler
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


Event = GenerationReport | EvaluationProgress


@dataclass(frozen=True)
class FitResult:
    best_z: np.ndarray
    projection: ProjectionSpec
    metric: str
    dev: float
    train_loss: float
    test: Evaluation | None
    manual: Evaluation | None
    calls: int
    wall_time: float
    ledger: dict[str, int]
    run_dir: Path | None = None


@dataclass
class _Candidate:
    z: np.ndarray
    loss: float
    calls: int


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

    def _emit(self, event: Event) -> None:
        for cb in self.callbacks:
            cb(event)

    async def fit(self) -> FitResult:
        cfg, backend, task = self.config, self.backend, self.task
        info = backend.info
        run = RunDirectory.create(self.run_dir, {**self.run_info, "tune": cfg.to_dict()}) if self.run_dir else None
        split = FewShotSplit.draw(task.load("train"), cfg.k_shot, cfg.seed, task.num_labels)
        train = await prepare(backend, task, split.train, cfg.prompt_length, what="train examples")
        dev = await prepare(backend, task, split.dev, cfg.prompt_length, what="dev examples")
        spec = ProjectionSpec.for_model(
            seed=cfg.seed, prompt_length=cfg.prompt_length, hidden_size=info.hidden_size,
            intrinsic_dim=cfg.intrinsic_dim, embedding_std=info.embedding_std, alpha=cfg.alpha,
            sigma0=cfg.sigma0, distribution=cfg.distribution,
        )
        project = Projection(spec)
        opt = CMAES(cfg.intrinsic_dim, popsize=cfg.popsize, sigma0=cfg.sigma0, seed=cfg.seed, bounds=cfg.bounds)
        ledger = BudgetLedger(cfg.budget)
        scheduler = PopulationScheduler(backend, ledger, concurrency=self.concurrency)
        loss_fn = LOSSES.get(cfg.loss)

        start = time.perf_counter()
        best: _Candidate | None = None
        best_dev: float | None = None
        pending: _Candidate | None = None
        best_loss = float("inf")
        next_check = cfg.eval_every
        generation = 0
        while ledger.remaining > 0:
            population = opt.ask()
            n = ledger.reserve(len(population))
            zs = np.asarray(population[:n])
            logits = await scheduler.evaluate(project(zs), train.batch, z=zs, projection=project)
            losses = loss_fn(logits, train.labels)
            if n == len(population):
                opt.tell(population, losses)
            generation += 1
            finite = np.where(np.isfinite(losses), losses, np.inf)
            i = int(np.argmin(finite))
            best_loss = min(best_loss, float(finite[i]))
            if pending is None or finite[i] < pending.loss:
                pending = _Candidate(np.array(population[i]), float(finite[i]), ledger.calls)
            dev_value = None
            if pending is not None and (ledger.calls >= next_check or ledger.remaining == 0):
                dev_value = await self._dev_metric(scheduler, project, pending.z, dev)
                if best_dev is None or dev_value > best_dev:
                    best, best_dev = pending, dev_value
                    if run:
                        run.save_best(self._best_record(best, best_dev, spec, generation), project(best.z)[0])
                pending = None
                next_check = (ledger.calls // cfg.eval_every + 1) * cfg.eval_every
            elapsed = time.perf_counter() - start
            report = GenerationReport(
                generation=generation, calls=ledger.calls, budget=cfg.budget,
                loss_min=float(np.nanmin(losses)), loss_mean=float(np.nanmean(losses)), loss_max=float(np.nanmax(losses)),
                best_loss=best_loss, train_accuracy=float((logits[i].argmax(-1) == train.labels).mean()),
                dev_metric=dev_value, best_dev=best_dev, elapsed=elapsed,
                calls_per_s=ledger.calls / elapsed if elapsed > 0 else 0.0,
            )
            if run:
                run.append_history(report.to_record())
            self._emit(report)
        assert best is not None and best_dev is not None
        test_eval = manual = None
        if self.evaluate_test:
            test_eval = await self._test(project(best.z)[0])
            if self.evaluate_manual:
                manual = await self._test(None)
        wall = time.perf_counter() - start
        result = FitResult(best.z, spec, task.metric, best_dev, best.loss, test_eval, manual, ledger.calls, wall,
                           ledger.to_dict(), run.path if run else None)
        if run:
            run.write_json(RESULT, {
                "metric": task.metric, "dev": best_dev, "train_loss": best.loss,
                "test": test_eval.to_dict() if test_eval else None,
                "manual_prompt_test": manual.to_dict() if manual else None, "calls": ledger.calls,
                "wall_time_s": wall, "ledger": ledger.to_dict(),
                "dropped": {"train": train.dropped, "dev": dev.dropped},
            })
        return result

    async def _dev_metric(self, scheduler: PopulationScheduler, project: Projection, z: np.ndarray, dev: LabelledBatch) -> float:
        zs = np.atleast_2d(z)
        logits = await scheduler.evaluate(project(zs), dev.batch, charged=False, z=zs, projection=project)
        return summarise(logits[0], dev, self.task.metric).value

    async def _test(self, prompt: np.ndarray | None) -> Evaluation:
        """Score ``prompt`` (``None``: the manual template alone) on the test set."""
        plen = 0 if prompt is None else len(prompt)
        data = await prepare(self.backend, self.task, self.task.load("test"), plen, what="test examples")
        logits = await score_in_chunks(
            self.backend, prompt, data,
            progress=lambda d, t: self._emit(EvaluationProgress(d, t, "test" if prompt is not None else "manual")),
        )
        return summarise(logits, data, self.task.metric)

    @staticmethod
    def _best_record(best: _Candidate, dev: float, spec: ProjectionSpec, generation: int) -> dict[str, Any]:
        return {"z": [float(x) for x in best.z], "projection": spec.to_dict(), "dev": dev,
                "train_loss": best.loss, "found_at_calls": best.calls, "checked_at_generation": generation}
