"""The remote backend against real services on 127.0.0.1: the Backend contract, errors, routing, limits."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import numpy as np
import pytest
from aiohttp import web
from remote_support import CAUSAL_BATCH, MASKED_BATCH, NO_WAIT, GatedBackend, RecordingSleep, prompts, served, wait_until

from lmaas_tune.backends.base import Query, ScoringBatch
from lmaas_tune.backends.factory import BackendSettings, open_backend
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.http.ratelimit import EndpointGate, EndpointLimits, TokenBucket
from lmaas_tune.backends.remote.client import RemoteBackend, token_from_env
from lmaas_tune.backends.http.retrying import RetryConfig, parse_retry_after
from lmaas_tune.backends.traffic import metering
from lmaas_tune.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLostError,
    RejectedError,
    RemoteError,
    ServerError,
)
from lmaas_tune.tuning.ledger import BudgetLedger
from lmaas_tune.projection import Projection, ProjectionSpec
from lmaas_tune.tuning.scheduler import PopulationScheduler
from lmaas_tune.server import RunningServer, ServerConfig, create_app


def _batch_for(backend: LocalBackend) -> ScoringBatch:
    return CAUSAL_BATCH if backend.info.kind.value == "causal" else MASKED_BATCH


@pytest.mark.parametrize("upload", ["embeddings", "projection"])
async def test_remote_backend_keeps_the_backend_contract(any_backend: LocalBackend, upload: str) -> None:
    batch, info = _batch_for(any_backend), any_backend.info
    spec = ProjectionSpec(seed=3, prompt_length=2, hidden_size=info.hidden_size, intrinsic_dim=5, scale=0.08)
    project = Projection(spec)
    z = np.random.default_rng(0).standard_normal((5, 5))
    async with served(any_backend, max_prompts_per_request=2) as server:
        async with RemoteBackend([server.url], upload=upload) as remote:
            r = remote.info
            assert (r.model_id, r.kind, r.hidden_size, r.embedding_std, r.max_length) == (
                info.model_id, info.kind, info.hidden_size, info.embedding_std, info.max_length)
            assert remote.upload_mode == upload and r.supports_projection
            assert await remote.token_lengths(batch) == await any_backend.token_lengths(batch)
            # five candidates over requests of at most two: split, sent together, reassembled in order
            got = await remote.score_projected(z, project, batch)
            manual = await remote.score(None, batch)
            empty = await remote.score(np.zeros((1, 0, info.hidden_size), np.float32), batch)
    want = await any_backend.score(project(z), batch)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(manual, await any_backend.score(None, batch), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(empty, manual)


async def test_float16_upload_is_close(llama_backend: LocalBackend) -> None:
    rows = prompts(3, 2, llama_backend.info.hidden_size)
    async with served(llama_backend) as server, RemoteBackend([server.url], wire_dtype="float16") as remote:
        got = await remote.score(rows, CAUSAL_BATCH)
    np.testing.assert_allclose(got, await llama_backend.score(rows, CAUSAL_BATCH), atol=1e-2)


async def test_traffic_is_metered_per_http_request(llama_backend: LocalBackend) -> None:
    rows = prompts(4, 2, llama_backend.info.hidden_size)
    async with served(llama_backend, max_prompts_per_request=2) as server, RemoteBackend([server.url]) as remote:
        with metering() as meter:
            await remote.score(rows, CAUSAL_BATCH)
        # one registration, two score requests of two candidates
        assert (meter.attempts, meter.retries, meter.failures) == (3, 0, 0)
        assert meter.bytes_up > 4 * 2 * 32 * 4 and meter.bytes_down > 0
        with metering() as again:
            await remote.score(rows[:1], CAUSAL_BATCH)
        assert again.attempts == 1  # the batch is registered once
        server.service.batches.forget(CAUSAL_BATCH.key)  # as after a restart
        with metering() as lost:
            out = await remote.score(rows[:1], CAUSAL_BATCH)
        assert (lost.attempts, lost.failures, lost.retries) == (3, 1, 1)  # 404 unknown_batch, PUT, POST
    np.testing.assert_allclose(out, await llama_backend.score(rows[:1], CAUSAL_BATCH), atol=1e-5, rtol=1e-5)


async def test_rejections_are_typed_and_not_retried(llama_backend: LocalBackend) -> None:
    async with served(llama_backend, token="tok") as server:
        wrong = RemoteBackend([server.url], token="wrong", retry=NO_WAIT)
        with metering() as meter, pytest.raises(AuthenticationError) as auth:
            await wrong.connect()  # a failed connect closes what it opened
        assert auth.value.status_code == 401 and not auth.value.retryable and meter.attempts == 1
        async with RemoteBackend([server.url], token="tok", retry=NO_WAIT) as remote:
            with metering() as meter, pytest.raises(RejectedError) as too_long:
                await remote.score(prompts(1, 126, llama_backend.info.hidden_size), CAUSAL_BATCH)
            assert too_long.value.status_code == 422 and too_long.value.field == "prompts.shape"
            assert (meter.attempts, meter.failures, meter.retries) == (2, 1, 0)  # PUT, then one POST
    async with served(llama_backend, max_body_bytes=2000) as server, RemoteBackend([server.url], retry=NO_WAIT) as remote:
        with pytest.raises(RejectedError) as big:  # one candidate is over the body limit
            await remote.score(prompts(1, 40, llama_backend.info.hidden_size), CAUSAL_BATCH)
        assert big.value.status_code == 413 and big.value.code == "body_too_large"


def test_retry_after_parsing_and_backoff() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("-1") is None
    cfg = RetryConfig(base_delay=0.5, max_delay=8.0, max_retry_after=60.0)
    rng = random.Random(0)
    assert cfg.delay(1, 30.0, rng) == 30.0 and cfg.delay(1, 600.0, rng) == 60.0  # honoured, capped
    for n, top in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 8.0), (12, 8.0)]:
        d = cfg.delay(n, None, rng)
        assert 0.75 * top <= d <= top


async def test_token_bucket_and_gate_on_a_fake_clock() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(2.0, 2.0, clock=lambda: now[0], sleep=sleep)
    assert [await bucket.acquire() for _ in range(2)] == [0.0, 0.0]  # the burst
    assert await bucket.acquire() == pytest.approx(0.5)  # then the rate
    assert await bucket.acquire(5) == pytest.approx(1.0)  # larger than the bucket: waits for a full one...
    assert bucket.tokens == pytest.approx(-3.0)  # ...and leaves it in debt
    assert await bucket.acquire() == pytest.approx(2.0)

    gate = EndpointGate(EndpointLimits(max_in_flight=2, requests_per_second=10, tokens_per_minute=600),
                        clock=lambda: now[0], sleep=sleep)
    slept.clear()
    async with gate.admit(tokens=600):  # a full minute of tokens
        assert gate.free == 1
        async with gate.admit(tokens=60):
            assert gate.free == 0
    assert slept == [pytest.approx(6.0)]  # 60 tokens at 10 per second
    with pytest.raises(ConfigError):
        EndpointLimits(max_in_flight=0)


async def test_concurrency_cap_per_endpoint_holds(llama_backend: LocalBackend) -> None:
    seen = {"now": 0, "max": 0}

    @web.middleware
    async def count(request: web.Request, handler: object) -> web.StreamResponse:
        seen["now"] += 1
        seen["max"] = max(seen["max"], seen["now"])
        try:
            await asyncio.sleep(0.01)
            return await handler(request)  # type: ignore[operator]
        finally:
            seen["now"] -= 1

    config = ServerConfig(port=0)
    app = create_app(llama_backend, config)
    app.middlewares.append(count)
    async with RunningServer(llama_backend, config, app=app) as server:
        async with RemoteBackend([server.url], limits=EndpointLimits(max_in_flight=2)) as remote:
            sched = PopulationScheduler(remote, BudgetLedger(100), concurrency=8, chunk_size=1)
            await sched.evaluate(prompts(8, 2, llama_backend.info.hidden_size), CAUSAL_BATCH, charged=False)
    assert seen["max"] == 2


async def test_two_endpoints_share_a_population(llama_backend: LocalBackend) -> None:
    rows = prompts(12, 2, llama_backend.info.hidden_size, seed=4)
    async with served(llama_backend) as a, served(llama_backend) as b:
        async with RemoteBackend([a.url, b.url], limits=EndpointLimits(max_in_flight=3)) as remote:
            assert remote.info.max_concurrency == 6
            ledger = BudgetLedger(12)
            ledger.reserve(12)
            out = await PopulationScheduler(remote, ledger, chunk_size=1).evaluate(rows, CAUSAL_BATCH)
        served_by = (a.service.batcher.requests, b.service.batcher.requests)
    assert sum(served_by) == 12 and min(served_by) > 0
    assert ledger.calls == 12 and ledger.attempts == 12 + 2  # + one registration per endpoint
    np.testing.assert_allclose(out, await llama_backend.score(rows, CAUSAL_BATCH), atol=1e-5, rtol=1e-5)


async def test_a_dead_endpoint_fails_over_to_a_live_one(llama_backend: LocalBackend) -> None:
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    rows = prompts(4, 2, llama_backend.info.hidden_size)
    async with served(llama_backend) as live:
        remote = RemoteBackend([live.url, dead], retry=NO_WAIT)
        with pytest.raises(ConnectionLostError):  # every endpoint must answer /v1/info at connect
            await remote.connect()
        await remote.aclose()
        remote = await RemoteBackend([live.url], retry=NO_WAIT).connect()
        remote._eps.append(type(remote._eps[0])(dead, EndpointGate(EndpointLimits())))  # it died after connecting
        remote._eps[-1].service = remote._eps[0].service
        try:
            ledger = BudgetLedger(4)
            ledger.reserve(4)
            out = await PopulationScheduler(remote, ledger, chunk_size=1, concurrency=4).evaluate(rows, CAUSAL_BATCH)
        finally:
            await remote.aclose()
    assert ledger.calls == 4 and ledger.failures > 0 and ledger.retries == ledger.failures
    np.testing.assert_allclose(out, await llama_backend.score(rows, CAUSAL_BATCH), atol=1e-5, rtol=1e-5)


async def test_endpoints_serving_different_models_are_refused(llama_backend: LocalBackend, gpt2_backend: LocalBackend) -> None:
    async with served(llama_backend) as a, served(gpt2_backend) as b:
        remote = RemoteBackend([a.url, b.url])
        with pytest.raises(ConfigError, match="same model"):
            await remote.connect()
        await remote.aclose()


async def test_exhausted_retries_raise_the_last_typed_error(llama_backend: LocalBackend) -> None:
    config = ServerConfig(port=0)
    app = create_app(llama_backend, config)

    @web.middleware
    async def always_503(request: web.Request, handler: object) -> web.StreamResponse:
        if request.path == "/v1/score":
            return web.json_response({"error": {"code": "overloaded", "message": "busy"}}, status=503,
                                     headers={"Retry-After": "2"})
        return await handler(request)  # type: ignore[operator]

    app.middlewares.append(always_503)
    sleep = RecordingSleep()
    async with RunningServer(llama_backend, config, app=app) as server:
        async with RemoteBackend([server.url], retry=RetryConfig(max_attempts=4, max_retry_after=1.5), sleep=sleep) as remote:
            with metering() as meter, pytest.raises(ServerError) as exc:
                await remote.score(prompts(1, 2, llama_backend.info.hidden_size), CAUSAL_BATCH)
    assert exc.value.status_code == 503 and exc.value.retry_after == 2.0 and exc.value.code == "overloaded"
    assert sleep.delays == [1.5, 1.5, 1.5]  # Retry-After honoured, capped
    assert (meter.attempts, meter.retries, meter.failures) == (1 + 4, 3, 4)  # PUT + four POSTs


async def test_settings_open_a_remote_backend_and_aclose_leaves_nothing_open(
        llama_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTE_TEST_TOKEN", "abc")
    async with served(llama_backend, token="abc") as server:
        settings = BackendSettings.from_dict(
            BackendSettings("remote", endpoints=(server.url,), token_env="REMOTE_TEST_TOKEN").to_dict())
        assert settings.endpoints == (server.url,)
        remote = await asyncio.to_thread(open_backend, settings)  # the blocking path the CLI takes
        assert isinstance(remote, RemoteBackend) and remote.info.device == "remote"
        await remote.score(prompts(2, 2, llama_backend.info.hidden_size), CAUSAL_BATCH)
        assert server.open_connections >= 1  # keep-alive
        await remote.aclose()
        await remote.aclose()  # idempotent
        await wait_until(lambda: server.open_connections == 0, "the service to see the connections close")
        with pytest.raises(ConfigError, match="closed"):
            await remote.score(None, CAUSAL_BATCH)
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()  # nor any task
    with pytest.raises(ConfigError, match="not set"):
        token_from_env("NO_SUCH_TOKEN_VAR")
    with pytest.raises(ConfigError, match="http"):
        RemoteBackend(["ftp://x"])
    with pytest.raises(ConfigError, match="not connected"):
        RemoteBackend(["http://127.0.0.1:1"]).info


async def test_batches_larger_than_the_service_takes_are_split(llama_backend: LocalBackend) -> None:
    batch = ScoringBatch(tuple(Query(f"it was a {w} movie . It was") for w in ("great", "bad", "good", "terrible", "fun")),
                         ("bad", "great"))
    rows = prompts(3, 2, llama_backend.info.hidden_size)
    async with served(llama_backend, max_queries_per_batch=2) as server, RemoteBackend([server.url]) as remote:
        assert await remote.token_lengths(batch) == await llama_backend.token_lengths(batch)
        got = await remote.score(rows, batch)
        manual = await remote.score(None, batch)
    np.testing.assert_allclose(got, await llama_backend.score(rows, batch), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(manual, await llama_backend.score(None, batch), atol=1e-5, rtol=1e-5)


async def test_a_cancelled_call_is_not_retried(llama_backend: LocalBackend) -> None:
    gated = GatedBackend(llama_backend)
    async with served(gated) as server, RemoteBackend([server.url], retry=NO_WAIT) as remote:
        await remote.token_lengths(CAUSAL_BATCH)

        async def call() -> None:
            with metering() as meter:
                try:
                    await remote.score(prompts(1, 2, llama_backend.info.hidden_size), CAUSAL_BATCH)
                finally:
                    seen.append(meter)

        seen: list = []
        task = asyncio.create_task(call())
        await wait_until(lambda: server.service.batcher.load == 1, "the request to arrive")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (seen[0].attempts, seen[0].retries, seen[0].failures) == (1, 0, 0)
        gated.gate.set()


def test_error_tree_has_builtin_mixins() -> None:
    from lmaas_tune.errors import BackendError, BadResponseError, LmaasTuneError, RateLimitError, RemoteTimeoutError

    assert issubclass(RemoteError, BackendError) and issubclass(RemoteError, LmaasTuneError)
    assert issubclass(RemoteTimeoutError, TimeoutError) and issubclass(ConnectionLostError, ConnectionError)
    assert issubclass(AuthenticationError, PermissionError) and issubclass(RejectedError, ValueError)
    assert all(c.retryable for c in (RateLimitError, ServerError, RemoteTimeoutError, ConnectionLostError, BadResponseError))
    assert not RejectedError.retryable and not AuthenticationError.retryable
    assert ScoringBatch((Query("x"),), ("a",)).key  # sanity: the batch key is what travels


async def test_test_scoring_runs_concurrently_and_is_recorded(llama_backend: LocalBackend, tmp_path) -> None:
    """evaluate/test scoring goes through the scheduler: several requests in flight at once on a
    remote backend, the logits those of one request at a time, and the ledger records it uncharged."""
    from remote_support import sentiment_task

    from lmaas_tune.tuning.evaluation import evaluate_prompt, prepare, score_prompt

    seen = {"now": 0, "max": 0, "score": 0}

    @web.middleware
    async def count(request: web.Request, handler: object) -> web.StreamResponse:
        scoring = request.path == "/v1/score"
        seen["now"] += scoring
        seen["max"] = max(seen["max"], seen["now"])
        seen["score"] += scoring
        try:
            await asyncio.sleep(0.01)
            return await handler(request)  # type: ignore[operator]
        finally:
            seen["now"] -= scoring

    task = sentiment_task(tmp_path)
    examples = task.load("test")
    prompt = prompts(1, 2, llama_backend.info.hidden_size, seed=9)[0]
    config = ServerConfig(port=0)
    app = create_app(llama_backend, config)
    app.middlewares.append(count)
    async with RunningServer(llama_backend, config, app=app) as server:
        async with RemoteBackend([server.url], limits=EndpointLimits(max_in_flight=4)) as remote:
            data = await prepare(remote, task, examples, 2)
            ledger = BudgetLedger.for_scoring()
            got = await score_prompt(remote, prompt, data, chunk=2, ledger=ledger)
            result = await evaluate_prompt(remote, task, examples, prompt, ledger=ledger)
    assert seen["max"] > 1 and seen["score"] >= len(examples) // 2
    assert (ledger.eval_calls, ledger.calls, ledger.uncharged_calls) == (2, 0, 0)
    assert ledger.attempts >= len(examples) // 2 + 1 and ledger.bytes_up > 0
    want = await llama_backend.score(prompt[None], data.batch)
    np.testing.assert_allclose(got, want[0], atol=1e-5, rtol=1e-5)
    assert result.n == len(examples)
