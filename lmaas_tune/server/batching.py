"""Dynamic batching: concurrent score requests share forward passes.

Requests that can share a pass (same batch, same prompt shape: length, and layer count for deep
prompts; or the manual template on the same batch) are merged: the first one waits at most ``window_s`` for others to join, a pass holds
at most ``max_batch_prompts`` candidates (a larger single request runs alone), and passes run
``max_parallel`` at a time (the backend's own concurrency). While the backend is busy, new
requests keep arriving and the next pass is the fuller for it.

Each request gets exactly its own rows of the pass's output, in order; by the Backend contract a
row depends only on its prompt and the batch, so merging does not change what a request gets
(up to the backend's floating-point behaviour across pass sizes, which the local backend keeps
within 1e-5). Manual-template requests on the same batch are answered by one call.

Admission is bounded: at most ``max_queue_prompts`` candidates wait or run at once; beyond that
:meth:`DynamicBatcher.score` raises :class:`QueueFullError` at once instead of queuing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from lmaas_tune.backends.base import Backend, ScoringBatch


class QueueFullError(Exception):
    """The service holds as much work as it may; try again later."""


class ShuttingDownError(Exception):
    """The batcher is closing and takes no new work."""


@dataclass(eq=False)
class _Job:
    batch: ScoringBatch
    prompts: np.ndarray | None
    future: asyncio.Future[np.ndarray]
    arrived: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return 1 if self.prompts is None else len(self.prompts)

    @property
    def group(self) -> tuple[str, tuple[int, ...]]:
        return self.batch.key, () if self.prompts is None else tuple(self.prompts.shape[1:])


class DynamicBatcher:
    """Merges concurrent :meth:`score` calls into shared ``backend.score`` passes (see module doc)."""

    def __init__(self, backend: Backend, *, window_s: float = 0.005, max_batch_prompts: int = 64,
                 max_queue_prompts: int = 1024, max_parallel: int = 1) -> None:
        self.backend = backend
        self.window_s, self.max_batch_prompts = window_s, max_batch_prompts
        self.max_queue_prompts = max_queue_prompts
        self._slots = asyncio.Semaphore(max(1, max_parallel))
        self._pending: list[_Job] = []
        self._running: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self.load = 0  #: candidates waiting or running
        self.passes = 0  #: backend.score calls made
        self.requests = 0  #: score() calls answered or failed

    @property
    def queued(self) -> int:
        """Candidates waiting for a pass (not yet running)."""
        return sum(j.rows for j in self._pending)

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        """Logits ``[P, N, C]`` for this request's prompts, computed in a shared pass."""
        if self._closing:
            raise ShuttingDownError("the service is shutting down")
        job = _Job(batch, prompts, asyncio.get_running_loop().create_future())
        if self.load + job.rows > self.max_queue_prompts:
            raise QueueFullError(f"{self.load} candidates are queued; the limit is {self.max_queue_prompts}")
        self.load += job.rows
        self._pending.append(job)
        self._wakeup.set()
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name="lmaas-batcher")
        return await job.future

    async def aclose(self) -> None:
        """Take no new work, finish what is queued and running, then stop. Idempotent."""
        self._closing = True
        self._wakeup.set()
        if self._dispatcher is not None:
            await self._dispatcher
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    # -- the dispatcher ---------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather_window()
            await self._slots.acquire()
            jobs = self._take()
            task = asyncio.create_task(self._run(jobs))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather_window(self) -> None:
        """Wait until the oldest job's window has passed or its group fills a pass."""
        head = self._pending[0]
        deadline = head.arrived + self.window_s
        while not self._closing:
            rows = sum(j.rows for j in self._pending if j.group == head.group)
            left = deadline - time.monotonic()
            if rows >= self.max_batch_prompts or left <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Job]:
        """The oldest job and the jobs that can share its pass, up to the pass size."""
        head = self._pending[0]
        taken: list[_Job] = []
        rows = 0
        for job in self._pending:
            if job.group != head.group:
                continue
            if taken and head.prompts is not None and rows + job.rows > self.max_batch_prompts:
                break
            taken.append(job)
            rows += job.rows
        ids = {id(j) for j in taken}
        self._pending = [j for j in self._pending if id(j) not in ids]
        return taken

    async def _run(self, jobs: list[_Job]) -> None:
        batch = jobs[0].batch
        try:
            if jobs[0].prompts is None:  # manual template: one answer serves every request
                out = await self.backend.score(None, batch)
                parts = [out] * len(jobs)
            else:
                prompts = np.concatenate([j.prompts for j in jobs if j.prompts is not None], axis=0)
                out = await self.backend.score(prompts, batch)
                bounds = np.cumsum([0] + [j.rows for j in jobs])
                parts = [out[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        except Exception as exc:  # every request of the pass gets the backend's error
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
        else:
            for job, part in zip(jobs, parts):
                if not job.future.done():
                    job.future.set_result(part)
        finally:
            self.passes += 1
            self.requests += len(jobs)
            self.load -= sum(j.rows for j in jobs)
            self._slots.release()
