"""Dynamic batching on the real tiny models: shared passes, per-row results, bounds, draining."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from remote_support import CAUSAL_BATCH, GatedBackend, prompts, wait_until

from lmaas_tune.backends.base import Query, ScoringBatch
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.errors import InputTooLongError
from lmaas_tune.server.batching import DynamicBatcher, QueueFullError, ShuttingDownError

OTHER = ScoringBatch((Query("the plot was terrible . It was"),), ("bad", "great"))


async def test_concurrent_requests_share_one_pass_and_get_their_own_rows(any_backend: LocalBackend) -> None:
    gated = GatedBackend(any_backend)
    batcher = DynamicBatcher(gated, window_s=0.0, max_batch_prompts=64)
    batch = CAUSAL_BATCH if any_backend.info.kind.value == "causal" else \
        ScoringBatch(tuple(Query(q.prefix, " .") for q in CAUSAL_BATCH.queries), CAUSAL_BATCH.label_words)
    h = any_backend.info.hidden_size
    sizes = [1, 3, 2, 1, 4, 1]
    requests = [prompts(n, 2, h, seed=i) for i, n in enumerate(sizes)]
    tasks = [asyncio.create_task(batcher.score(r, batch)) for r in requests]
    await wait_until(lambda: batcher.load == sum(sizes), "all requests admitted")
    gated.gate.set()
    answers = await asyncio.gather(*tasks)
    await batcher.aclose()
    assert gated.calls == [sum(sizes)] and batcher.passes == 1  # one forward pass for six requests
    for req, ans in zip(requests, answers):
        assert ans.shape == (len(req), 3, 2)
        np.testing.assert_allclose(ans, await any_backend.score(req, batch), atol=1e-5, rtol=1e-5)


async def test_passes_are_capped_and_only_compatible_requests_merge(llama_backend: LocalBackend) -> None:
    gated = GatedBackend(llama_backend)
    batcher = DynamicBatcher(gated, window_s=0.0, max_batch_prompts=4)
    h = llama_backend.info.hidden_size
    jobs = [(prompts(2, 2, h, 1), CAUSAL_BATCH), (prompts(2, 2, h, 2), CAUSAL_BATCH), (prompts(1, 2, h, 3), CAUSAL_BATCH),
            (prompts(1, 3, h, 4), CAUSAL_BATCH),  # another prompt length
            (prompts(1, 2, h, 5), OTHER),  # another batch
            (prompts(6, 2, h, 6), CAUSAL_BATCH),  # larger than a pass: runs alone
            (None, CAUSAL_BATCH), (None, CAUSAL_BATCH)]  # manual template: answered once
    tasks = [asyncio.create_task(batcher.score(p, b)) for p, b in jobs]
    rows = sum(1 if p is None else len(p) for p, _ in jobs)
    await wait_until(lambda: batcher.load == rows, "all requests admitted")
    gated.gate.set()
    answers = await asyncio.gather(*tasks)
    await batcher.aclose()
    assert sorted(gated.calls) == sorted([4, 1, 1, 1, 6, 0])
    assert batcher.requests == len(jobs)
    for (p, b), ans in zip(jobs, answers):
        np.testing.assert_allclose(ans, await llama_backend.score(p, b), atol=1e-5, rtol=1e-5)


async def test_the_queue_is_bounded_and_closing_drains_it(llama_backend: LocalBackend) -> None:
    gated = GatedBackend(llama_backend)
    batcher = DynamicBatcher(gated, window_s=0.0, max_queue_prompts=3)
    h = llama_backend.info.hidden_size
    held = [asyncio.create_task(batcher.score(prompts(n, 2, h, n), CAUSAL_BATCH)) for n in (1, 2)]
    await wait_until(lambda: batcher.load == 3, "a full queue")
    with pytest.raises(QueueFullError):
        await batcher.score(prompts(1, 2, h), CAUSAL_BATCH)
    closing = asyncio.create_task(batcher.aclose())
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDownError):
        await batcher.score(prompts(1, 2, h), CAUSAL_BATCH)
    gated.gate.set()
    await closing
    assert [a.shape[0] for a in await asyncio.gather(*held)] == [1, 2]  # queued work was finished
    assert batcher.load == 0


async def test_a_failing_pass_fails_each_of_its_requests(llama_backend: LocalBackend) -> None:
    batcher = DynamicBatcher(llama_backend, window_s=0.01)
    h = llama_backend.info.hidden_size
    too_long = prompts(1, 126, h)  # with the queries, over the model's 128 positions
    results = await asyncio.gather(*(batcher.score(too_long, CAUSAL_BATCH) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, InputTooLongError) for r in results)
    ok = await batcher.score(prompts(1, 2, h), CAUSAL_BATCH)  # the batcher carries on
    assert ok.shape == (1, 3, 2)
    await batcher.aclose()
