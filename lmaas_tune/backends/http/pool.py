"""A set of HTTP endpoints that serve the same model, and how one request reaches one of them.

:class:`EndpointPool` owns what every HTTP backend needs: one ``aiohttp.ClientSession``
(keep-alive, connect and request timeouts, the bearer token), a gate per endpoint (concurrency
cap, request and token buckets, :mod:`.ratelimit`), and :meth:`EndpointPool.call`, which runs one
request with tenacity, retrying what :class:`~lmaas_tune.errors.RemoteError` marks retryable and
moving to another endpoint than the one that just failed. Every attempt, retry, failure and byte
is reported on the caller's traffic meter (:mod:`lmaas_tune.backends.traffic`).

What is said to each endpoint (paths, payloads, answers) is the business of the backend that
uses the pool: :mod:`lmaas_tune.backends.remote` (an lmaas-tune service) and
:mod:`lmaas_tune.backends.vllm` (a vLLM server).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from lmaas_tune import __version__
from lmaas_tune.errors import ConfigError, RemoteError
from lmaas_tune.backends.traffic import record_retry, record_traffic
from .ratelimit import EndpointGate, EndpointLimits, Sleep
from .retrying import RetryConfig
from .transport import exchange

log = logging.getLogger("lmaas_tune")
T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to open a connection, and for a whole request (sending, waiting, reading)."""

    connect: float = 10.0
    request: float = 120.0


class Endpoint:
    """One service URL and its gate; backends subclass it to keep what they know of the service."""

    def __init__(self, url: str, gate: EndpointGate) -> None:
        self.url = url
        self.gate = gate
        self.uses = 0


E = TypeVar("E", bound=Endpoint)


def check_url(url: str) -> str:
    """``url`` without a trailing slash, or a :class:`ConfigError` if it is not http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"endpoint {url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8080")
    return url.rstrip("/")


class EndpointPool(Generic[E]):
    """Endpoints sharing the work of one backend; see the module docstring.

    ``make(url, gate)`` builds each endpoint (a subclass of :class:`Endpoint`); ``server`` names
    what should be listening there, for the message when nothing is. ``sleep`` replaces the retry
    and rate-limit sleeps (tests).
    """

    def __init__(
        self,
        urls: Sequence[str],
        make: Callable[[str, EndpointGate], E],
        *,
        server: str,
        token: str | None = None,
        limits: EndpointLimits = EndpointLimits(),
        retry: RetryConfig = RetryConfig(),
        timeouts: Timeouts = Timeouts(),
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not urls:
            raise ConfigError("this backend needs at least one endpoint URL (--endpoint)")
        checked = [check_url(u) for u in urls]
        if len(set(checked)) != len(checked):
            raise ConfigError(f"an endpoint is listed twice: {checked}")
        self.endpoints = [make(u, EndpointGate(limits, sleep=sleep)) for u in checked]
        self.retry, self.timeouts, self.server = retry, timeouts, server
        self._sleep, self._rng = sleep, random.Random()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "User-Agent": f"lmaas-tune/{__version__}"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(e.url for e in self.endpoints)

    @property
    def max_in_flight(self) -> int:
        """Requests the pool lets out at once, over all endpoints."""
        return sum(e.gate.limits.max_in_flight for e in self.endpoints)

    # -- the session -----------------------------------------------------------------------------

    def new_session(self) -> aiohttp.ClientSession:
        """A session sized for the pool (callers that run on another event loop own and close it)."""
        connector = aiohttp.TCPConnector(limit=self.max_in_flight + len(self.endpoints), keepalive_timeout=30.0)
        timeout = aiohttp.ClientTimeout(total=self.timeouts.request, connect=self.timeouts.connect)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self._headers)

    def session(self) -> aiohttp.ClientSession:
        """The pool's own session, opened on first use."""
        if self._closed:
            raise ConfigError("this backend is closed")
        if self._session is None:
            self._session = self.new_session()
        return self._session

    async def aclose(self) -> None:
        """Close the session and its connections. Idempotent; the pool cannot be used afterwards."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- one request -----------------------------------------------------------------------------

    async def send(self, ep: E, method: str, path: str, payload: bytes | None = None, tokens: int = 0) -> dict[str, Any]:
        """One exchange with ``ep`` once its gate admits it (``tokens``: model tokens it costs)."""
        async with ep.gate.admit(tokens):
            return await exchange(self.session(), method, ep.url + path, payload, server=self.server)

    async def call(self, what: str, fn: Callable[[E], Awaitable[T]], *, pinned: E | None = None,
                   attempts: int | None = None) -> T:
        """``fn(endpoint)``, retried on retryable failures, moving to another endpoint where there is one."""
        failed: list[E] = []

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            record_retry(f"{what} failed ({exc})", wait)
            log.warning("%s failed (%s); retry %d of %d in %.2f s", what, exc, state.attempt_number,
                        self.retry.max_attempts - 1, wait)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts or self.retry.max_attempts), wait=self._wait, sleep=self._sleep,
            retry=retry_if_exception(lambda e: isinstance(e, RemoteError) and e.retryable),
            before_sleep=before_sleep, reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                ep = pinned or self._pick(failed[-1] if failed else None)
                try:
                    return await fn(ep)
                except RemoteError:
                    record_traffic(failures=1)
                    failed.append(ep)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True raises the last error

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.retry.delay(state.attempt_number, getattr(exc, "retry_after", None), self._rng)

    def _pick(self, avoid: E | None) -> E:
        pool = [e for e in self.endpoints if e is not avoid] or self.endpoints
        ep = max(pool, key=lambda e: (e.gate.free, -e.uses))
        ep.uses += 1
        return ep
