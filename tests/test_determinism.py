"""The determinism matrix: one seed and config, one result, whatever the way there.

The reference is a local fit at concurrency 1. Every other cell must give the same best z (exactly),
the same dev metric and test predictions, and the same history: concurrency 1 / 4 / 20 on the local
backend; one endpoint and three endpoints sharing each population through real services on
127.0.0.1; three endpoints answering out of order with 429s, 5xx bursts, dropped connections and
malformed answers on the way; and a run stopped part-way and resumed at another concurrency.
(Train losses compare to 1e-5: a service may merge requests into larger forward passes; see
tests/test_remote_fit.py.)
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pause_points
import pytest
from remote_support import RecordingSleep, sentiment_task
from resume_support import outcome
from test_remote_faults import FaultInjector
from test_remote_fit import assert_same_fit, fit

from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.remote.client import RemoteBackend
from lmaas_tune.backends.http.retrying import RetryConfig
from lmaas_tune.methods import TuneConfig
from lmaas_tune.server import RunningServer, ServerConfig, create_app
from lmaas_tune.tasks.task import Task
from lmaas_tune.tuning.tuner import BlackBoxTuner

CFG = TuneConfig(prompt_length=3, intrinsic_dim=6, popsize=6, budget=36, k_shot=4, eval_every=12, seed=13)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return sentiment_task(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(task: Task, llama_backend: LocalBackend) -> Any:
    return asyncio.run(fit(task, llama_backend, CFG, concurrency=1))


@pytest.mark.parametrize("concurrency", [4, 20])
async def test_local_concurrency(task: Task, llama_backend: LocalBackend, reference: Any, concurrency: int) -> None:
    assert_same_fit(await fit(task, llama_backend, CFG, concurrency=concurrency), reference)


def _faults(offset: int) -> dict[int, str]:
    """Per service, by arrival: every non-timing fault kind, shifted so the services fail at different moments."""
    kinds = ["429", "500", "drop", "502", "malformed", "bad-shape", "503", "429-date"]
    return {offset + 2 * i: kind for i, kind in enumerate(kinds)}


@pytest.mark.parametrize(("endpoints", "faults", "concurrency"), [(1, False, 4), (3, False, 4), (3, True, 20)])
async def test_endpoints_and_faults(task: Task, llama_backend: LocalBackend, reference: Any, endpoints: int,
                                    faults: bool, concurrency: int) -> None:
    injectors = [FaultInjector(_faults(i) if faults else {}) for i in range(endpoints)]
    config = ServerConfig(port=0)
    sleep = RecordingSleep()
    retry = RetryConfig(max_attempts=12, base_delay=0.25, max_delay=4.0, max_retry_after=5.0)
    async with AsyncExitStack() as stack:
        servers = []
        for injector in injectors:
            app = create_app(llama_backend, config)
            app.middlewares.append(injector.middleware)
            servers.append(await stack.enter_async_context(RunningServer(llama_backend, config, app=app)))
        async with RemoteBackend([s.url for s in servers], retry=retry, sleep=sleep) as remote:
            got = await fit(task, remote, CFG, concurrency=concurrency)
    assert_same_fit(got, reference)
    ledger = got[0].ledger
    assert ledger["calls"] == CFG.budget
    if faults:
        assert sum(sum(i.injected.values()) for i in injectors) > 0 and ledger["retries"] > 0
    if endpoints > 1:
        assert sum(1 for i in injectors if i.arrivals) == endpoints  # every service took part


async def test_resumed_at_another_concurrency(task: Task, llama_backend: LocalBackend, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    want = tmp_path / "want"
    await BlackBoxTuner(task, llama_backend, CFG, run_dir=want, concurrency=1).fit()

    class Crash(BaseException):
        pass

    def crash(stage: str, generation: int) -> None:
        if (stage, generation) == ("history", 3):
            raise Crash  # the process "dies" here

    pause_points.install(crash, monkeypatch.setattr)
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        await BlackBoxTuner(task, llama_backend, CFG, run_dir=run_dir, concurrency=1).fit()
    monkeypatch.undo()
    await BlackBoxTuner(task, llama_backend, CFG, run_dir=run_dir, concurrency=20).fit(resume=True)
    # the same decisions; the ledger's attempts differ (20 in flight means more, smaller requests) and the
    # losses may move in the last float32 bits (forward passes packed differently)
    got, expected = outcome(run_dir), outcome(want)
    assert got["best"]["z"] == expected["best"]["z"] and got["best"]["dev"] == expected["best"]["dev"]
    assert got["best"]["train_loss"] == pytest.approx(expected["best"]["train_loss"], abs=1e-5)
    assert {k: got["result"][k] for k in ("dev", "test", "calls")} == {k: expected["result"][k] for k in ("dev", "test", "calls")}
    keys = ("generation", "calls", "dev_metric", "best_dev")
    assert [{k: h[k] for k in keys} for h in got["history"]] == [{k: h[k] for k in keys} for h in expected["history"]]
