"""Fault injection on a seeded schedule against a real service on 127.0.0.1.

The service is the real one with a middleware in front of ``POST /v1/score`` that, by arrival
number, answers 429 (Retry-After in seconds or as an HTTP date), bursts of 500/502/503, holds the
request past the client's timeout, closes the connection half-way through the answer, or answers
200 with malformed JSON or logits of the wrong shape. The fit must finish with the fault-free
result, an exact ledger and nothing left open. Retry delays are recorded, not slept.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from remote_support import RecordingSleep, sentiment_task, wait_until
from test_remote_fit import assert_same_fit, fit

from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.remote.client import RemoteBackend, Timeouts
from lmaas_tune.backends.http.retrying import RetryConfig
from lmaas_tune.methods import TuneConfig
from lmaas_tune.tuning.fewshot import FewShotSplit
from lmaas_tune.server import RunningServer, ServerConfig, create_app

CFG = TuneConfig(prompt_length=3, intrinsic_dim=6, popsize=6, budget=36, k_shot=4, eval_every=12, seed=11)
KINDS = ("429", "429-date", "burst", "slow", "drop", "malformed", "bad-shape")


def fault_plan(seed: int) -> dict[int, str]:
    """Arrival index -> fault; every kind at least once, bursts as three 5xx in a row."""
    rng = random.Random(seed)
    kinds = list(KINDS) + ["burst", "429", "drop", "malformed"]
    rng.shuffle(kinds)
    plan: dict[int, str] = {}
    i = 0
    for kind in kinds:
        i += rng.randint(0, 2)
        if kind == "burst":
            for code in rng.sample(["500", "502", "503"], 3):
                plan[i] = code
                i += 1
        else:
            plan[i] = kind
            i += 1
    return plan


@dataclass
class FaultInjector:
    plan: dict[int, str]
    arrivals: int = 0
    #: per batch key: requests seen, faults injected, candidate rows answered in full
    seen: Counter[str] = field(default_factory=Counter)
    faulted: Counter[str] = field(default_factory=Counter)
    delivered_rows: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/v1/score":
            return await handler(request)
        body = await request.json()
        key = body.get("batch_key", "")
        rows = body["prompts"]["shape"][0] if body.get("prompts") else body["z"]["shape"][0] if body.get("z") else 1
        fault = self.plan.get(self.arrivals)
        self.arrivals += 1
        self.seen[key] += 1
        if fault is None:
            response = await handler(request)
            self.delivered_rows[key] += rows
            return response
        self.faulted[key] += 1
        self.injected[fault] += 1
        return await self.inject(fault, request, handler)

    async def inject(self, fault: str, request: web.Request, handler: Any) -> web.StreamResponse:
        def error(status: int, **headers: str) -> web.Response:
            return web.json_response({"error": {"code": "injected", "message": fault}}, status=status, headers=headers)

        if fault == "429":
            return error(429, **{"Retry-After": "2"})
        if fault == "429-date":
            when = datetime.now(timezone.utc) + timedelta(seconds=30)
            return error(429, **{"Retry-After": format_datetime(when, usegmt=True)})
        if fault in ("500", "502"):
            return error(int(fault))
        if fault == "503":
            return error(503, **{"Retry-After": "1"})
        if fault == "slow":  # answer only once the client has given up waiting
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.01)
            return await handler(request)
        if fault == "malformed":
            return web.Response(status=200, text='{"protocol": 1, "logits": {"dtype": "float32", "sha', content_type="application/json")
        if fault == "bad-shape":
            answer = json.loads((await handler(request)).body)
            answer["logits"] = {"dtype": "float32", "shape": [1, 1, 1], "data": "AAAAAA=="}
            return web.json_response(answer)
        assert fault == "drop"  # headers and half the body, then the connection goes
        full = (await handler(request)).body
        stream = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        stream.content_length = len(full)
        await stream.prepare(request)
        await stream.write(full[: len(full) // 2])
        assert request.transport is not None
        request.transport.close()
        return stream


def _keys(task: Any, backend: LocalBackend) -> tuple[str, str]:
    split = FewShotSplit.draw(task.load("train"), CFG.k_shot, CFG.seed, task.num_labels)
    return task.render(split.train, backend.info.kind).key, task.render(split.dev, backend.info.kind).key


@pytest.mark.parametrize("seed", [1, 2])
async def test_fit_survives_faults_with_the_fault_free_result_and_an_exact_ledger(
        llama_backend: LocalBackend, tmp_path: Path, seed: int) -> None:
    task = sentiment_task(tmp_path)
    train_key, dev_key = _keys(task, llama_backend)
    config = ServerConfig(port=0)

    async with RunningServer(llama_backend, config) as clean, RemoteBackend([clean.url]) as remote:
        fault_free = await fit(task, remote, CFG, concurrency=3)

    injector = FaultInjector(fault_plan(seed))
    app = create_app(llama_backend, config)
    app.middlewares.append(injector.middleware)
    sleep = RecordingSleep()
    retry = RetryConfig(max_attempts=len(injector.plan) + 1, base_delay=0.25, max_delay=4.0, max_retry_after=5.0)
    async with RunningServer(llama_backend, config, app=app) as server:
        async with RemoteBackend([server.url], retry=retry, timeouts=Timeouts(connect=5.0, request=1.5), sleep=sleep) as remote:
            faulty = await fit(task, remote, CFG, concurrency=3)
        await wait_until(lambda: server.open_connections == 0, "client connections to close")
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()

    # the faults happened, all kinds of them, and changed nothing
    assert set(injector.injected) >= {"429", "500", "502", "503", "slow", "drop", "malformed", "bad-shape"}
    assert sum(injector.faulted[k] for k in (train_key, dev_key)) > 0
    assert_same_fit(faulty, fault_free)

    # the ledger is exact: every HTTP attempt of the fit, every failed one retried, one charge per candidate
    # (the fit's requests: train, dev checks and the final test scoring, all through the scheduler)
    ledger = faulty[0].ledger
    fit_keys = tuple(injector.seen)
    assert {train_key, dev_key} < set(fit_keys) and ledger["eval_calls"] == 1
    assert ledger["calls"] == CFG.budget == injector.delivered_rows[train_key]
    assert ledger["attempts"] == sum(injector.seen[k] for k in fit_keys)
    assert ledger["failures"] == ledger["retries"] == sum(injector.faulted[k] for k in fit_keys)
    assert ledger["uncharged_calls"] == injector.delivered_rows[dev_key]
    assert ledger["bytes_up"] > ledger["bytes_down"] > 0

    # delays: Retry-After honoured (2 s; an HTTP date 30 s ahead capped at 5 s), otherwise backoff with jitter
    if injector.injected["429"]:
        assert 2.0 in sleep.delays
    if injector.injected["429-date"]:
        assert 5.0 in sleep.delays
    assert len(sleep.delays) == sum(injector.injected.values())
    assert all(0 <= d <= 5.0 for d in sleep.delays)
