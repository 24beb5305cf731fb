"""The async library surface on tiny real models: progress as events and as an async iterator,
cancellation that leaves a resumable run, retries reported, tuners sharing one backend."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from remote_support import WrappedBackend, served, sentiment_task
from resume_support import assert_same_outcome, checkpoint_doc
from test_remote_fit import assert_same_fit

from lmaas_tune import BudgetSpent, DevChecked, EvaluationProgress, FitResult, GenerationReport, Retry
from lmaas_tune.backends.base import Backend, ScoringBatch
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.http.ratelimit import EndpointLimits
from lmaas_tune.backends.remote.client import RemoteBackend
from lmaas_tune.methods import TuneConfig
from lmaas_tune.backends.traffic import record_retry, record_traffic
from lmaas_tune.tasks.task import Task
from lmaas_tune.tuning.tuner import BlackBoxTuner

ROOT = Path(__file__).resolve().parents[1]
# 5 generations of 6 (calls 6..30); dev checks at 12, 24 and 30
CFG = TuneConfig(prompt_length=3, intrinsic_dim=6, popsize=6, budget=30, k_shot=4, eval_every=12, seed=7)


async def _fit(task: Task, backend: Backend, cfg: TuneConfig = CFG, **kw: Any) -> tuple[FitResult, list[Any]]:
    events: list[Any] = []
    result = await BlackBoxTuner(task, backend, cfg, callbacks=[events.append], **kw).fit()
    return result, events


async def test_stream_yields_every_event_in_order_and_ends_with_the_result(llama_backend: LocalBackend,
                                                                           tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    plain, called_back = await _fit(task, llama_backend)
    async with BlackBoxTuner(task, llama_backend, CFG).stream() as stream:
        items = [item async for item in stream]
    *events, result = items
    assert isinstance(result, FitResult) and stream.result is result
    np.testing.assert_array_equal(result.best_z, plain.best_z)
    assert result.dev == plain.dev and result.test is not None and plain.test is not None
    assert result.test.predictions == plain.test.predictions
    assert [type(e) for e in events] == [type(e) for e in called_back]  # the same events, either way

    kinds = [type(e).__name__ for e in events if not isinstance(e, EvaluationProgress)]
    assert kinds == ["GenerationReport", "DevChecked", "GenerationReport", "GenerationReport", "DevChecked",
                     "GenerationReport", "DevChecked", "GenerationReport", "BudgetSpent"]
    reports = [e for e in events if isinstance(e, GenerationReport)]
    assert [r.calls for r in reports] == [6, 12, 18, 24, 30]
    checks = [e for e in events if isinstance(e, DevChecked)]
    assert [c.calls for c in checks] == [12, 24, 30] and all(c.metric == "accuracy" for c in checks)
    assert [c.value for c in checks] == [r.dev_metric for r in reports if r.dev_metric is not None]
    assert checks[0].improved and checks[-1].best == result.dev == max(c.value for c in checks)
    spent = next(e for e in events if isinstance(e, BudgetSpent))
    assert (spent.calls, spent.budget, spent.generation) == (30, 30, 5)
    tests = [e for e in events if isinstance(e, EvaluationProgress)]
    assert tests and tests[-1].done == tests[-1].total == 16
    assert events.index(spent) < events.index(tests[0])  # the budget is spent before the test set is scored


@pytest.mark.parametrize("how", ["task", "stream"])
async def test_cancelled_fit_resumes_to_the_uninterrupted_result(llama_backend: LocalBackend, tmp_path: Path,
                                                                 how: str) -> None:
    """Cancel mid-run (a fit task cancelled, or a stream left early), resume: best z, dev, history and
    ledger are those of the run that was never interrupted."""
    task = sentiment_task(tmp_path)
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole = await BlackBoxTuner(task, llama_backend, CFG, run_dir=whole_dir).fit()

    if how == "task":
        second = asyncio.Event()

        def watch(event: object) -> None:
            if isinstance(event, GenerationReport) and event.generation == 2:
                second.set()

        fit = asyncio.ensure_future(BlackBoxTuner(task, llama_backend, CFG, run_dir=cut_dir, callbacks=[watch]).fit())
        await second.wait()  # the fit goes on to score generation 3 in the backend's thread
        fit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fit
    else:
        async with BlackBoxTuner(task, llama_backend, CFG, run_dir=cut_dir).stream() as stream:
            async for event in stream:
                if isinstance(event, GenerationReport) and event.generation == 2:
                    break  # leaving the block cancels the fit

    doc = checkpoint_doc(cut_dir)
    assert doc["status"] == "interrupted" and doc["stopped_by"] == "cancelled"
    assert 2 <= doc["generation"] < 5 and not (cut_dir / "result.json").exists()

    resumed = await BlackBoxTuner(task, llama_backend, CFG, run_dir=cut_dir).fit(resume=True)
    np.testing.assert_array_equal(resumed.best_z, whole.best_z)
    assert (resumed.dev, resumed.train_loss, resumed.calls) == (whole.dev, whole.train_loss, whole.calls)
    assert resumed.test is not None and whole.test is not None
    assert resumed.test.predictions == whole.test.predictions
    assert_same_outcome(cut_dir, whole_dir)  # result, best prompt, history, ledger, loop state


class FlakyBackend(WrappedBackend):
    """The real backend behind a flaky link: the ``fail_on``-th score call's first attempt fails, and
    the backend retries it on its own (as the remote backend does), reporting the retry."""

    def __init__(self, inner: Backend, fail_on: int) -> None:
        super().__init__(inner)
        self.fail_on, self.calls = fail_on, 0

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            record_traffic(attempts=1, failures=1)
            record_retry("service hiccup", 0.0)
        record_traffic(attempts=1)
        return await self.inner.score(prompts, batch)


async def test_retries_are_reported_as_events_and_change_nothing(llama_backend: LocalBackend, tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    cfg = CFG.with_overrides(budget=12)
    want, _ = await _fit(task, llama_backend, cfg)
    got, events = await _fit(task, FlakyBackend(llama_backend, fail_on=2), cfg)
    retries = [e for e in events if isinstance(e, Retry)]
    assert len(retries) == 1 and retries[0].retries == 1 and "service hiccup" in retries[0].reason
    assert retries[0].delay is not None and retries[0].delay >= 0
    np.testing.assert_array_equal(got.best_z, want.best_z)
    assert got.dev == want.dev and got.ledger["retries"] == 1 and got.ledger["calls"] == 12


async def test_tuners_share_one_backend_and_one_rate_limit(llama_backend: LocalBackend, tmp_path: Path) -> None:
    """Two tuners at once in one event loop, on one in-process model and then on one remote backend
    (one endpoint, one request in flight at a time): each ends exactly as it does alone."""
    task = sentiment_task(tmp_path)
    cfgs = [CFG.with_overrides(budget=18), CFG.with_overrides(budget=18, seed=8)]
    alone = [await _fit(task, llama_backend, cfg) for cfg in cfgs]
    alone_reports = [(r, [e for e in ev if isinstance(e, GenerationReport)]) for r, ev in alone]

    together = await asyncio.gather(*(_fit(task, llama_backend, cfg) for cfg in cfgs))
    for (r, ev), want in zip(together, alone_reports):
        assert_same_fit((r, [e for e in ev if isinstance(e, GenerationReport)]), want)

    async with served(llama_backend) as server:
        async with RemoteBackend([server.url], limits=EndpointLimits(max_in_flight=1)) as remote:
            remote_runs = await asyncio.gather(*(_fit(task, remote, cfg) for cfg in cfgs))
    for (r, ev), want in zip(remote_runs, alone_reports):
        assert_same_fit((r, [e for e in ev if isinstance(e, GenerationReport)]), want)
        assert r.ledger["calls"] == 18


def test_the_library_logs_to_one_named_logger_and_configures_nothing() -> None:
    for path in (ROOT / "lmaas_tune").rglob("*.py"):
        if "cli" in path.parts:  # the command is an application: it may configure logging
            continue
        text = path.read_text("utf-8")
        assert "basicConfig" not in text and "addHandler" not in text, path
        for name in re.findall(r"getLogger\(([^)]*)\)", text):
            assert re.fullmatch(r"\"lmaas_tune(\.\w+)*\"", name), f"{path}: getLogger({name})"
    assert logging.getLogger("lmaas_tune").handlers == []
