"""Progress events beyond the generation report, and the async-iterator form of a callback stream.

A running fit tells its callbacks what happens as it happens: a generation ended
(:class:`GenerationReport`), a candidate was checked on the dev split
(:class:`DevChecked`), a scoring request is being tried again (:class:`Retry`), the budget is
spent (:class:`BudgetSpent`), the test set is being scored
(:class:`EvaluationProgress`). Every event is a frozen dataclass.

:class:`EventStream` turns any job that reports through a callback into an async iterator: the
job runs in its own task, its events come out in the order it emitted them, and the last item is
its result. It is an async context manager: leaving the block early (``break``, an exception, a
cancelled consumer) cancels the job and waits for it to stop, so nothing keeps running behind
the consumer's back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

E = TypeVar("E")
R = TypeVar("R")


@dataclass(frozen=True)
class GenerationReport:
    """What one generation did; also the run's history record."""

    generation: int
    calls: int
    budget: int
    loss_min: float
    loss_mean: float
    loss_max: float
    best_loss: float
    train_accuracy: float
    dev_metric: float | None
    best_dev: float | None
    elapsed: float
    calls_per_s: float

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvaluationProgress:
    """Progress of a final test evaluation (``what``: "test" for the tuned prompt, "manual" for none)."""

    done: int
    total: int
    what: str = "test"


@dataclass(frozen=True)
class DevChecked:
    """The lowest-train-loss candidate since the previous check was scored on the dev split.

    ``improved``: its dev ``value`` beat the best so far (strictly), so it is now the run's prompt;
    ``best`` is the best dev value after this check.
    """

    generation: int
    calls: int
    metric: str
    value: float
    best: float
    improved: bool


@dataclass(frozen=True)
class Retry:
    """Scoring failed and is being tried again (nothing is charged twice).

    ``retries`` is how many retries this event stands for: 1 when the population scheduler retries
    a chunk (``delay`` is then its back-off in seconds); for a backend that retries its own
    requests (the remote backend, per HTTP request) the scheduler reports them all once the chunk
    is scored, with ``delay`` None.
    """

    retries: int
    reason: str
    delay: float | None = None


@dataclass(frozen=True)
class BudgetSpent:
    """The last charged call is scored: tuning is over (the test evaluation may follow)."""

    calls: int
    budget: int
    generation: int
    elapsed: float


#: everything a running fit reports to its callbacks
Event = GenerationReport | EvaluationProgress | DevChecked | Retry | BudgetSpent

_END = object()


class EventStream(Generic[E, R]):
    """Runs ``job(emit)`` in a task; iterating yields what the job passes to ``emit``, then what it returns.

    ``async with stream: async for item in stream: ...``. The job starts on entering the block (or
    on the first ``__anext__``). If it fails, its exception is raised from the iterator after the
    events before it. Leaving the block, or :meth:`aclose`, cancels a job still running and waits
    for it to stop. :attr:`result` is the job's return value once the iterator has yielded it.
    """

    def __init__(self, job: Callable[[Callable[[E], None]], Awaitable[R]]) -> None:
        self._job = job
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._task: asyncio.Future[R] | None = None
        self._finished = False

    def _start(self) -> asyncio.Future[R]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._job(self._queue.put_nowait))
            self._task.add_done_callback(lambda _: self._queue.put_nowait(_END))
        return self._task

    @property
    def result(self) -> R:
        if not self._finished or self._task is None:
            raise RuntimeError("the job has not finished; iterate the stream to its end first")
        return self._task.result()

    def __aiter__(self) -> "EventStream[E, R]":
        return self

    async def __anext__(self) -> E | R:
        if self._finished:
            raise StopAsyncIteration
        task = self._start()
        item = await self._queue.get()
        if item is _END:
            self._finished = True
            return task.result()
        return item  # type: ignore[return-value]  # everything but _END came from emit

    async def aclose(self) -> None:
        """Cancel the job if it is still running, and wait until it has stopped."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> "EventStream[E, R]":
        self._start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
