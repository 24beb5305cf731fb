"""Tuning through real services on 127.0.0.1: the same result as a local fit, and the budget held.

Tolerance: prompts travel as float32 (lossless for the embeddings upload; the projection upload
rebuilds them with the same numpy code), and a service may merge requests into larger forward
passes, which can move logits in the last float32 bits (the Backend contract allows 1e-5). On
these models the ranking of candidates is unaffected, so the best z, the dev metric, the test
predictions and the history compare exactly; train losses are compared to 1e-5.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from remote_support import served, sentiment_task

from lmaas_tune.backends.base import Backend
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.remote.client import RemoteBackend
from lmaas_tune.methods import TuneConfig
from lmaas_tune.tuning.fewshot import FewShotSplit
from lmaas_tune.server import RunningServer, ServerConfig, create_app
from lmaas_tune.tasks.task import Task
from lmaas_tune.tuning.tuner import BlackBoxTuner, FitResult, GenerationReport

CFG = TuneConfig(prompt_length=3, intrinsic_dim=6, popsize=6, budget=30, k_shot=4, eval_every=12, seed=7)


async def fit(task: Task, backend: Backend, cfg: TuneConfig = CFG, **kw: Any) -> tuple[FitResult, list[GenerationReport]]:
    events: list[Any] = []
    result = await BlackBoxTuner(task, backend, cfg, callbacks=[events.append], **kw).fit()
    return result, [e for e in events if isinstance(e, GenerationReport)]


def assert_same_fit(got: tuple[FitResult, list[GenerationReport]], want: tuple[FitResult, list[GenerationReport]]) -> None:
    (r, hist), (w, whist) = got, want
    np.testing.assert_array_equal(r.best_z, w.best_z)
    assert (r.dev, r.calls) == (w.dev, w.calls)
    assert r.train_loss == pytest.approx(w.train_loss, abs=1e-5)
    if w.test is not None:
        assert r.test is not None and (r.test.value, r.test.predictions) == (w.test.value, w.test.predictions)
    assert [h.calls for h in hist] == [h.calls for h in whist]
    assert [h.dev_metric for h in hist] == [h.dev_metric for h in whist]
    np.testing.assert_allclose([h.loss_min for h in hist], [h.loss_min for h in whist], atol=1e-5)


@pytest.mark.parametrize(("model", "upload", "endpoints"), [("llama", "embeddings", 1), ("masked", "projection", 2)])
async def test_remote_fit_equals_local_fit(request: pytest.FixtureRequest, tmp_path: Path, model: str, upload: str,
                                           endpoints: int) -> None:
    backend: LocalBackend = request.getfixturevalue(f"{model}_backend")
    task = sentiment_task(tmp_path)
    local = await fit(task, backend, concurrency=1)
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(served(backend)) for _ in range(endpoints)]
        async with RemoteBackend([s.url for s in servers], upload=upload) as remote:
            assert remote.upload_mode == upload
            remote_fit = await fit(task, remote, concurrency=4)
        if endpoints > 1:
            assert all(s.service.batcher.requests > 0 for s in servers)  # both shared the populations
    assert_same_fit(remote_fit, local)
    ledger = remote_fit[0].ledger
    assert ledger["calls"] == CFG.budget and ledger["failures"] == ledger["retries"] == 0
    assert ledger["bytes_up"] > 0 and ledger["bytes_down"] > 0


def _train_key(task: Task, backend: Backend, cfg: TuneConfig) -> str:
    split = FewShotSplit.draw(task.load("train"), cfg.k_shot, cfg.seed, task.num_labels)
    return task.render(split.train, backend.info.kind).key


async def test_no_request_leaves_once_the_budget_is_spent(llama_backend: LocalBackend, tmp_path: Path) -> None:
    """Budget 10 with popsize 4 (4 + 4 + 2) on a slow service: the service never holds more than the budget."""
    cfg = TuneConfig(prompt_length=2, intrinsic_dim=4, popsize=4, budget=10, k_shot=4, eval_every=4, seed=3)
    task = sentiment_task(tmp_path)
    train_key = _train_key(task, llama_backend, cfg)
    state = {"done": 0, "in_flight": 0, "received": 0}
    violations: list[str] = []

    @web.middleware
    async def slow_and_watchful(req: web.Request, handler: Any) -> web.StreamResponse:
        if req.path != "/v1/score":
            return await handler(req)
        body = await req.json()
        rows = body["prompts"]["shape"][0] if body.get("prompts") else body["z"]["shape"][0] if body.get("z") else 1
        train = body.get("batch_key") == train_key
        if train:
            if state["done"] + state["in_flight"] + rows > cfg.budget:
                violations.append(f"{rows} rows arrived with {state['done']} done and {state['in_flight']} in flight")
            state["received"] += rows
            state["in_flight"] += rows
        try:
            await asyncio.sleep(0.05)
            return await handler(req)
        finally:
            if train:
                state["in_flight"] -= rows
                state["done"] += rows

    config = ServerConfig(port=0)
    app = create_app(llama_backend, config)
    app.middlewares.append(slow_and_watchful)
    async with RunningServer(llama_backend, config, app=app) as server:
        async with RemoteBackend([server.url]) as remote:
            result, hist = await fit(task, remote, cfg, concurrency=4, evaluate_test=False)
    assert violations == []
    assert state["received"] == state["done"] == cfg.budget == result.calls
    assert [h.calls for h in hist] == [4, 8, 10]
    assert result.ledger["attempts"] == server.service.batcher.requests  # every request the fit sent was scored
