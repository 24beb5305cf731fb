"""The vLLM backend against a real vLLM server (scripts/vllm_server.sh): the Backend contract.

The server runs the embedded model (SmolLM2-135M) in float32 on the CPU; the reference is the
same model in this process (the local backend, float32). What the two may differ by:

* vLLM returns log-probabilities, the local backend logits: they differ by one constant per row
  (the log of the softmax denominator), so scores are compared *centred* (each row minus its mean
  over the label words). Every loss lmaas-tune computes is unchanged by that constant.
* The arithmetic differs: vLLM's CPU attention and fused kernels sum in another order than
  transformers' eager layers. Centred scores agree to ``ATOL`` = 2e-4 (measured here: about 1e-5
  on short inputs, a few 1e-5 on the SST-2 batch with a 50-token prompt); the local backend's own
  contract is 1e-5 against a plain transformers forward, which vLLM cannot meet bit for bit.
* Within vLLM, a row does not depend on the other rows or on how they were split into requests
  (checked to ``ATOL`` too, though it has been exact here).
"""

from __future__ import annotations

import asyncio
import inspect

import numpy as np
import pytest

import vllm_support
from lmaas_tune.backends.base import ModelKind, Query, ScoringBatch
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.traffic import metering
from lmaas_tune.backends.vllm import RequestLimits, VllmBackend
from lmaas_tune.errors import ConfigError
from lmaas_tune.projection import Projection, ProjectionSpec
from lmaas_tune.tasks import get_task
from lmaas_tune.tuning.evaluation import prepare
from lmaas_tune.tuning.fewshot import FewShotSplit

pytestmark = pytest.mark.vllm

ATOL = 2e-4
TEXTS = ("it was a great movie", "a terrible film , it was bad", "the plot was thin but the acting was superb", "dull")
BATCH = ScoringBatch(tuple(Query(f"{t} . It was") for t in TEXTS), ("bad", "great"))


def centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=-1, keepdims=True)


def client(url: str, **kw: object) -> VllmBackend:
    return VllmBackend([url], vllm_support.MODEL, token=vllm_support.KEY, **kw)  # type: ignore[arg-type]


def prompts(n: int, length: int, std: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, length, 576)) * std).astype(np.float32)


async def test_describes_the_served_model_as_the_local_backend_does(vllm_url: str, embedded_local: LocalBackend) -> None:
    async with client(vllm_url) as vb:
        info, ref = vb.info, embedded_local.info
        assert inspect.iscoroutinefunction(vb.score) and inspect.iscoroutinefunction(vb.token_lengths)
        assert (info.model_id, info.kind, info.hidden_size, info.num_layers) == (
            ref.model_id, ModelKind.CAUSAL, ref.hidden_size, ref.num_layers)
        assert info.embedding_std == pytest.approx(ref.embedding_std, rel=1e-6)
        assert info.max_length == 512 and not info.supports_deep_prompts
        assert await vb.token_lengths(BATCH) == await embedded_local.token_lengths(BATCH)
        np.testing.assert_array_equal(await vb.embed_text(" It was great"), await embedded_local.embed_text(" It was great"))


async def test_no_prompt_empty_prompt_and_zero_prompts_match_the_local_model(
        vllm_url: str, embedded_local: LocalBackend) -> None:
    async with client(vllm_url) as vb:
        none = await vb.score(None, BATCH)
        empty = await vb.score(np.zeros((1, 0, 576), np.float32), BATCH)
        zeros = {n: await vb.score(np.zeros((1, n, 576), np.float32), BATCH) for n in (1, 4)}
    assert none.shape == (1, len(TEXTS), 2) and none.dtype == np.float32
    assert (none < 0).all() and (np.logaddexp.reduce(none, axis=-1) < 0).all()  # log-probabilities of two of many tokens
    np.testing.assert_array_equal(empty, none)
    np.testing.assert_allclose(centred(none), centred(await embedded_local.score(None, BATCH)), atol=ATOL)
    for n, got in zeros.items():
        want = await embedded_local.score(np.zeros((1, n, 576), np.float32), BATCH)
        np.testing.assert_allclose(centred(got), centred(want), atol=ATOL)
        assert not np.allclose(got, none, atol=1e-3)  # L zero vectors are positions, not the absence of a prompt


async def test_prompts_match_the_local_model_and_rows_do_not_depend_on_each_other(
        vllm_url: str, embedded_local: LocalBackend) -> None:
    p = prompts(5, 6, embedded_local.info.embedding_std)
    async with client(vllm_url) as vb:
        together = await vb.score(p, BATCH)
        alone = await vb.score(p[3:4], BATCH)
    async with client(vllm_url, requests=RequestLimits(max_prompts=3)) as vb:  # 20 rows in 7 requests, sent together
        with metering() as meter:
            split = await vb.score(p, BATCH)
    assert together.shape == (5, len(TEXTS), 2)
    np.testing.assert_allclose(centred(together), centred(await embedded_local.score(p, BATCH)), atol=ATOL)
    np.testing.assert_allclose(alone, together[3:4], atol=ATOL)
    np.testing.assert_allclose(split, together, atol=ATOL)
    assert meter.attempts == 7 and meter.retries == 0 and meter.bytes_up > 20 * 10 * 576 * 4 and meter.bytes_down > 0


async def test_requests_are_split_by_bytes_and_deep_prompts_are_refused(vllm_url: str) -> None:
    p = prompts(4, 6, 0.1)
    row = 4 * 576 * (6 + 8) * 4 // 3  # base64 of one row of about 14 positions
    async with client(vllm_url, requests=RequestLimits(max_bytes=3 * row)) as vb:
        with metering() as meter:
            small = await vb.score(p, BATCH)
        with pytest.raises(ConfigError, match="deep"):
            await vb.score(np.zeros((1, 30, 2, 576), np.float32), BATCH)
        with pytest.raises(ConfigError, match="hidden states"):
            await vb.hidden_state_std(BATCH)
    async with client(vllm_url) as vb:
        with metering() as one:
            whole = await vb.score(p, BATCH)
    assert one.attempts == 1 and meter.attempts > 4
    np.testing.assert_allclose(small, whole, atol=ATOL)


async def test_two_endpoints_share_a_population(vllm_url: str) -> None:
    other = vllm_url.replace("127.0.0.1", "localhost")
    p = prompts(6, 4, 0.1)
    async with VllmBackend([vllm_url, other], vllm_support.MODEL, token=vllm_support.KEY,
                           requests=RequestLimits(max_prompts=4)) as vb:
        got = await vb.score(p, BATCH)
        uses = [e.uses for e in vb._pool.endpoints]
    async with client(vllm_url) as vb:
        want = await vb.score(p, BATCH)
    assert min(uses) > 0 and sum(uses) == 6
    np.testing.assert_allclose(got, want, atol=ATOL)


async def test_sst2_scores_agree_with_the_local_backend(vllm_url: str, embedded_local: LocalBackend) -> None:
    """The CPU preset's shape on the SST-2 train batch: 20 candidates of the paper's projection."""
    task = get_task("sst2")
    split = FewShotSplit.draw(task.load("train"), 16, 42, task.num_labels)
    data = await prepare(embedded_local, task, split.train, prompt_length=10)
    info = embedded_local.info
    spec = ProjectionSpec.for_model(seed=42, prompt_length=10, hidden_size=info.hidden_size, intrinsic_dim=500,
                                    embedding_std=info.embedding_std)
    z = np.random.default_rng(7).standard_normal((20, 500))
    cands = Projection(spec)(z)
    local = await embedded_local.score(cands, data.batch)
    async with client(vllm_url) as vb:
        remote = await vb.score(cands, data.batch)
    labels = np.array([e.label for e in split.train])

    def losses(scores: np.ndarray) -> np.ndarray:
        logp = scores - np.logaddexp.reduce(scores, axis=-1, keepdims=True)
        return -logp[:, np.arange(len(labels)), labels].mean(axis=1)

    diff = float(np.abs(centred(remote) - centred(local)).max())
    a, b = losses(remote), losses(local)
    rank = float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])
    print(f"\nvLLM vs local on the SST-2 train batch ({len(labels)} examples x 20 candidates, L=10): "
          f"largest centred difference {diff:.2e}, Spearman rank agreement of the losses {rank:.4f}, "
          f"same best candidate: {int(a.argmin()) == int(b.argmin())}")
    assert diff < ATOL and rank > 0.99 and a.argmin() == b.argmin()


async def test_a_cancelled_score_leaves_the_backend_usable(vllm_url: str) -> None:
    p = prompts(20, 10, 0.1)
    async with client(vllm_url, requests=RequestLimits(max_prompts=8)) as vb:
        task = asyncio.ensure_future(vb.score(p, BATCH))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await vb.score(p[:1], BATCH)).shape == (1, len(TEXTS), 2)
