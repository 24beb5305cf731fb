"""Helpers shared by the server and remote-backend tests (not a test module).

Everything here is real: services are :class:`RunningServer` instances on 127.0.0.1 with a free
port, in the test's own event loop. :class:`GatedBackend` wraps a real backend and holds its
passes until the test opens the gate, so a test can fill a queue or shut down mid-request
without timing anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from lmaas_tune.backends.base import Backend, BackendInfo, Query, ScoringBatch
from lmaas_tune.backends.http.retrying import RetryConfig
from lmaas_tune.server import RunningServer, ServerConfig
from lmaas_tune.tasks import custom_task
from lmaas_tune.tasks.task import Task

CAUSAL_BATCH = ScoringBatch(
    (Query("it was a great movie . It was"), Query("a terrible movie . It was"), Query("the news was good news , yes")),
    ("bad", "great"),
)
MASKED_BATCH = ScoringBatch((Query("it was a great movie . It was", " ."), Query("a bad movie . It was", " .")), ("bad", "great"))


@asynccontextmanager
async def served(backend: Backend, **config: Any) -> AsyncIterator[RunningServer]:
    """A real service for ``backend`` on 127.0.0.1 and a free port."""
    async with RunningServer(backend, ServerConfig(port=0, **config)) as server:
        yield server


#: retries that never wait: the tests patch the delay instead of sleeping
NO_WAIT = RetryConfig(max_attempts=6, base_delay=0.0, max_delay=0.0, max_retry_after=0.0)


class RecordingSleep:
    """Stands in for ``asyncio.sleep`` in the retry loop: records the delays, does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


class WrappedBackend(Backend):
    """A real backend, passed through; subclasses change what ``score`` does around it."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def info(self) -> BackendInfo:
        return self.inner.info

    async def token_lengths(self, batch: ScoringBatch) -> tuple[int, ...]:
        return await self.inner.token_lengths(batch)

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        return await self.inner.score(prompts, batch)


class GatedBackend(WrappedBackend):
    """A real backend whose ``score`` waits until :attr:`gate` is set; counts passes and rows."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.calls: list[int] = []  # prompts per score() call

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        await self.gate.wait()
        self.calls.append(0 if prompts is None else len(prompts))
        return await self.inner.score(prompts, batch)


async def wait_until(predicate: Any, what: str, *, steps: int = 2000) -> None:
    """Yield to the loop until ``predicate()`` holds (bounded by steps, not by a clock)."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"gave up waiting for {what}")


async def post_json(session: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, dict[str, Any], Any]:
    async with session.post(url, json=body, **kw) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


def prompts(p: int, length: int, hidden: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal((p, length, hidden))).astype(np.float32)


POS = ["it was a great movie", "a good movie , great fun", "great acting and a good plot", "what a great movie",
       "good news , it was good", "a great , great movie", "the acting is good", "it was great fun"]
NEG = ["it was a bad movie", "a terrible movie", "the plot was terrible", "bad acting and a bad ending",
       "it was terrible", "the ending was bad", "a bad , bad movie", "terrible news , no"]


def sentiment_task(tmp: Path) -> Task:
    """A small custom sentiment task written to ``tmp`` (8 positive, 8 negative sentences)."""
    rows = [(s, "1") for s in POS] + [(s, "0") for s in NEG]
    for name in ("train.tsv", "test.tsv"):
        (tmp / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows), "utf-8")
    return custom_task(template="{sentence} . It was {mask}", label_words="bad,great",
                       train=str(tmp / "train.tsv"), test=str(tmp / "test.tsv"))


def sentiment_fit_args(tmp: Path, model: Path, *, budget: int = 12, intrinsic_dim: int = 4) -> list[str]:
    """``fit`` options for :func:`sentiment_task` (written to ``tmp``) on the tiny ``model``: a run of
    a few seconds (popsize 4, a 2-token prompt, 2 shots, seed 3, quiet)."""
    sentiment_task(tmp)
    return ["--task", "custom", "--template", "{sentence} . It was {mask}", "--label-words", "bad,great",
            "--train-file", str(tmp / "train.tsv"), "--test-file", str(tmp / "test.tsv"), "--device", "cpu",
            "--model", str(model), "--budget", str(budget), "--popsize", "4", "--prompt-length", "2",
            "--intrinsic-dim", str(intrinsic_dim), "--k-shot", "2", "--eval-every", "4", "--seed", "3", "--quiet"]


class ThreadedServer:
    """A real service on 127.0.0.1 in a background thread with its own event loop.

    For callers that run their own loop or none: the CLI through CliRunner (``asyncio.run`` inside),
    or synchronous hypothesis tests. ``middlewares`` go in front of the service's own routes.
    """

    def __init__(self, backend: Backend, *, middlewares: tuple[Any, ...] = (), **config: Any) -> None:
        import threading

        self.backend, self.middlewares, self.config = backend, middlewares, config
        self.url = ""
        self.server: RunningServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def _main(self) -> None:
        async def main() -> None:
            from lmaas_tune.server import create_app

            config = ServerConfig(port=0, **self.config)
            app = create_app(self.backend, config)
            app.middlewares.extend(self.middlewares)
            async with RunningServer(self.backend, config, app=app) as server:
                self.server, self.url = server, server.url
                self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    def __enter__(self) -> "ThreadedServer":
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None or not self.url:
            raise RuntimeError(f"the service did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the service thread did not stop"
