"""Every scoring goes through here: concurrent, shape-checked, and recorded in the budget ledger."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from lmaas_tune.backends.base import Backend, ScoringBatch
from lmaas_tune.backends.traffic import TrafficMeter, metering
from lmaas_tune.errors import BackendError
from lmaas_tune.projection import AnyProjection

from .events import Retry
from .ledger import BudgetLedger

log = logging.getLogger("lmaas_tune")

Progress = Callable[[int, int], None]


class PopulationScheduler:
    """Fans scoring work out to a backend in chunks, at most ``concurrency`` chunks at a time.

    Two kinds of work, one path:

    * :meth:`evaluate` scores a population of candidates on a batch (train: charged; dev:
      uncharged), ``chunk_size`` candidates per call (default: what the backend takes in one call).
    * :meth:`score_examples` scores one prompt (or the manual template alone) on a large batch
      (test scoring, ``evaluate``, ``predict``), ``chunk`` examples per call; uncharged.

    Results land by index, so the output is the same whatever the concurrency, the chunking or the
    order responses arrive in. Charged evaluations commit one call per scored candidate to the
    ledger; the caller reserves the calls first (see :meth:`BudgetLedger.reserve`). Dev checks count
    one ``uncharged_calls`` per candidate; :meth:`score_examples` one ``eval_calls`` per prompt.

    Retries are the backend's (the remote backend retries with tenacity); this class has none. A
    backend that reports its own transport traffic (see :mod:`lmaas_tune.backends.traffic`; the
    remote backend does, one attempt per HTTP request) is recorded as reported, and each of its
    retries is passed on to ``events`` as a :class:`~lmaas_tune.tuning.events.Retry` as it
    happens; otherwise each ``score`` call counts as one attempt.
    """

    def __init__(
        self,
        backend: Backend,
        ledger: BudgetLedger,
        *,
        concurrency: int | None = None,
        chunk_size: int | None = None,
        events: Callable[[Retry], None] | None = None,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        info = backend.info
        self.concurrency = max(1, concurrency or info.max_concurrency)
        self.chunk_size = chunk_size or info.max_prompts_per_call
        self.events = events

    async def evaluate(
        self,
        prompts: np.ndarray,
        batch: ScoringBatch,
        *,
        charged: bool = True,
        z: np.ndarray | None = None,
        projection: AnyProjection | None = None,
    ) -> np.ndarray:
        """Logits ``[P, N, C]``. With ``charged``, the P calls must already be reserved.

        With ``z`` and ``projection`` (``prompts == projection(z)``), chunks go through
        :meth:`Backend.score_projected`, so a backend may send z instead of the prompts.
        """
        n = len(prompts)
        size = self.chunk_size or max(1, -(-n // self.concurrency))
        bounds = [(i, min(i + size, n)) for i in range(0, n, size)]
        expected = (len(batch), len(batch.label_words))

        def call(lo: int, hi: int) -> Awaitable[np.ndarray]:
            if z is not None and projection is not None:
                return self.backend.score_projected(z[lo:hi], projection, batch, prompts=prompts[lo:hi])
            return self.backend.score(prompts[lo:hi], batch)

        finished = 0

        def done(lo: int, hi: int) -> None:
            nonlocal finished
            finished += hi - lo
            if charged:
                self.ledger.commit(hi - lo)
            else:
                self.ledger.uncharged_calls += hi - lo

        try:
            results = await self._fan_out(bounds, call, lambda lo, hi: (hi - lo, *expected), done)
        except BaseException:
            if charged:  # reserved by the caller, never scored: the calls go back to the budget
                self.ledger.release(n - finished)
            raise
        return np.concatenate(results, axis=0)

    async def score_examples(
        self, prompt: np.ndarray | None, batch: ScoringBatch, *, chunk: int = 64, progress: Progress | None = None,
    ) -> np.ndarray:
        """Logits ``[N, C]`` of one prompt (``[L, D]``, deep ``[layers, L, D]``, or ``None`` for the manual
        template alone) on every example of ``batch``, ``chunk`` examples per call; uncharged.

        ``progress(done, total)`` is told the examples scored so far as chunks complete.
        """
        if chunk < 1:
            raise BackendError(f"chunks must hold at least one example; got {chunk}")
        arr = None if prompt is None else np.asarray(prompt, dtype=np.float32)[None]
        n = len(batch)
        bounds = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
        scored = 0

        def done(lo: int, hi: int) -> None:
            nonlocal scored
            scored += hi - lo
            if progress is not None:
                progress(scored, n)

        results = await self._fan_out(
            bounds, lambda lo, hi: self.backend.score(arr, batch.subset(range(lo, hi))),
            lambda lo, hi: (1, hi - lo, len(batch.label_words)), done)
        self.ledger.eval_calls += 1
        return np.concatenate([r[0] for r in results], axis=0)

    async def _fan_out(
        self,
        bounds: Sequence[tuple[int, int]],
        call: Callable[[int, int], Awaitable[np.ndarray]],
        shape: Callable[[int, int], tuple[int, ...]],
        done: Callable[[int, int], None],
    ) -> list[np.ndarray]:
        """Run ``call(lo, hi)`` for every chunk, ``concurrency`` at a time; results in chunk order.

        On a failure the other chunks are cancelled (and awaited) before the error propagates.
        """
        gate = asyncio.Semaphore(self.concurrency)
        results: list[np.ndarray | None] = [None] * len(bounds)

        async def run(k: int, lo: int, hi: int) -> None:
            async with gate:
                results[k] = await self._metered(call(lo, hi), shape(lo, hi))
            done(lo, hi)

        tasks = [asyncio.ensure_future(run(k, lo, hi)) for k, (lo, hi) in enumerate(bounds)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [r for r in results if r is not None]

    async def _metered(self, pending: Awaitable[np.ndarray], expected: tuple[int, ...]) -> np.ndarray:
        with metering(on_retry=self._on_retry) as meter:
            try:
                out = await pending
            except asyncio.CancelledError:
                self._record(meter, failed=False)
                raise
            except Exception:
                self._record(meter, failed=True)
                raise
        self._record(meter, failed=False)
        if out.shape != expected:
            raise BackendError(f"backend returned logits of shape {out.shape}; expected {expected}")
        return out

    def _on_retry(self, reason: str, delay: float | None) -> None:
        log.warning("scoring failed (%s); retrying%s", reason, "" if delay is None else f" in {delay:.1f}s")
        if self.events is not None:
            self.events(Retry(1, reason, delay))

    def _record(self, meter: TrafficMeter, *, failed: bool) -> None:
        led = self.ledger
        if meter.attempts:  # the backend counted its own transport attempts
            led.attempts += meter.attempts
            led.retries += meter.retries
            led.failures += meter.failures
            led.bytes_up += meter.bytes_up
            led.bytes_down += meter.bytes_down
        else:
            led.attempts += 1
            led.failures += int(failed)
            led.retries += meter.retries
