"""Evaluate a population concurrently on a backend, with retries and exact budget accounting."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .backends.base import Backend, ScoringBatch
from .backends.traffic import TrafficMeter, metering
from .errors import BackendError
from .events import Retry
from .ledger import BudgetLedger
from .deep_projection import DeepProjection
from .projection import Projection

log = logging.getLogger("lmaas_tune")


class RetryableError(BackendError):
    """A failure worth another attempt (the backend says so by raising a subclass of this)."""


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries per chunk, exponential backoff ``min(base * 2**n, cap)`` with full jitter."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.base_delay * 2**attempt, self.max_delay))


class PopulationScheduler:
    """Fans a population out to a backend in chunks, at most ``concurrency`` at a time.

    Chunks hold ``chunk_size`` candidates (default: what the backend takes in one call). Results
    land by index, so the output is the same whatever the concurrency, the chunking or the order
    responses arrive in. Charged evaluations commit one call per scored candidate to the ledger;
    the caller reserves the calls first (see :meth:`BudgetLedger.reserve`).

    Attempts, retries, failures and bytes: a backend that reports its own transport traffic
    (see :mod:`lmaas_tune.backends.traffic`; the remote backend does, one attempt per HTTP
    request) is recorded as reported; otherwise each ``score`` call counts as one attempt.

    ``events``, when given, receives a :class:`~lmaas_tune.events.Retry` for every retry: the
    scheduler's own as it waits, a backend's once its chunk is scored.
    """

    def __init__(
        self,
        backend: Backend,
        ledger: BudgetLedger,
        *,
        concurrency: int | None = None,
        chunk_size: int | None = None,
        retry: RetryPolicy = RetryPolicy(),
        events: Callable[[Retry], None] | None = None,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        info = backend.info
        self.concurrency = max(1, concurrency or info.max_concurrency)
        self.chunk_size = chunk_size or info.max_prompts_per_call
        self.retry = retry
        self.events = events

    async def evaluate(
        self,
        prompts: np.ndarray,
        batch: ScoringBatch,
        *,
        charged: bool = True,
        z: np.ndarray | None = None,
        projection: Projection | DeepProjection | None = None,
    ) -> np.ndarray:
        """Logits ``[P, N, C]``. With ``charged``, the P calls must already be reserved.

        With ``z`` and ``projection`` (``prompts == projection(z)``), chunks go through
        :meth:`Backend.score_projected`, so a backend may send z instead of the prompts.
        """
        n = len(prompts)
        size = self.chunk_size or max(1, -(-n // self.concurrency))
        bounds = [(i, min(i + size, n)) for i in range(0, n, size)]
        gate = asyncio.Semaphore(self.concurrency)
        results: list[np.ndarray | None] = [None] * len(bounds)

        async def run(k: int, lo: int, hi: int) -> None:
            async with gate:
                zz = None if z is None else z[lo:hi]
                results[k] = await self._attempt(prompts[lo:hi], batch, zz, projection)
            if charged:
                self.ledger.commit(hi - lo)
            else:
                self.ledger.uncharged_calls += hi - lo

        tasks = [asyncio.ensure_future(run(k, lo, hi)) for k, (lo, hi) in enumerate(bounds)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if charged:
                done = sum(hi - lo for (lo, hi), r in zip(bounds, results) if r is not None)
                self.ledger.release(n - done)
            raise
        return np.concatenate([r for r in results if r is not None], axis=0)

    async def _attempt(
        self, prompts: np.ndarray, batch: ScoringBatch, z: np.ndarray | None,
        projection: Projection | DeepProjection | None
    ) -> np.ndarray:
        for attempt in range(self.retry.attempts):
            try:
                with metering() as meter:
                    if z is not None and projection is not None:
                        out = await self.backend.score_projected(z, projection, batch, prompts=prompts)
                    else:
                        out = await self.backend.score(prompts, batch)
            except RetryableError as exc:
                self._record(meter, failed=True)
                if attempt + 1 >= self.retry.attempts:
                    raise
                self.ledger.retries += 1
                wait = self.retry.delay(attempt)
                log.warning("scoring failed (%s); retry %d in %.1fs", exc, attempt + 1, wait)
                if self.events is not None:
                    self.events(Retry(1, str(exc), wait))
                await asyncio.sleep(wait)
                continue
            except asyncio.CancelledError:
                self._record(meter, failed=False)
                raise
            except Exception:
                self._record(meter, failed=True)
                raise
            self._record(meter, failed=False)
            expected = (len(prompts), len(batch), len(batch.label_words))
            if out.shape != expected:
                raise BackendError(f"backend returned logits of shape {out.shape}; expected {expected}")
            return out
        raise AssertionError("unreachable")

    def _record(self, meter: TrafficMeter, *, failed: bool) -> None:
        led = self.ledger
        if meter.attempts:  # the backend counted its own transport attempts
            led.attempts += meter.attempts
            led.retries += meter.retries
            led.failures += meter.failures
            led.bytes_up += meter.bytes_up
            led.bytes_down += meter.bytes_down
            if meter.retries and self.events is not None:
                self.events(Retry(meter.retries, f"the backend retried {meter.retries} request(s)"))
        else:
            led.attempts += 1
            led.failures += int(failed)
