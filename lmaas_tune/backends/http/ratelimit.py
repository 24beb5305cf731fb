"""Client-side rate limits for one endpoint: a token bucket per quota and a concurrency cap."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from lmaas_tune.errors import ConfigError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate`` tokens per second, holding at most ``capacity``; starts full.

    ``acquire(n)`` waits until ``n`` tokens are there and takes them. Waiters are served in
    arrival order (the bucket's lock is held while the head waiter sleeps). A request larger than
    the capacity waits for a full bucket and then leaves it in debt, so it is slowed down, never
    refused or starved. A cancelled waiter takes nothing.
    """

    def __init__(self, rate: float, capacity: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if not (rate > 0 and capacity > 0):
            raise ConfigError(f"a rate limit needs a positive rate and capacity; got {rate}, {capacity}")
        self.rate, self.capacity = float(rate), float(capacity)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` tokens could be taken (0 if now)."""
        self._refill()
        return max(0.0, (min(amount, self.capacity) - self._tokens) / self.rate)

    async def acquire(self, amount: float = 1.0) -> float:
        """Take ``amount`` tokens, waiting as needed; returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            while (wait := self.wait_time(amount)) > 0:
                await self._sleep(wait)
                waited += wait
            self._tokens -= amount
        return waited


@dataclass(frozen=True)
class EndpointLimits:
    """Per-endpoint client limits.

    ``max_in_flight`` requests at once; optionally ``requests_per_second`` (bursts of ``burst``,
    default the rate rounded up) and ``tokens_per_minute`` (model tokens: prompt plus query, per
    candidate, as the service's ``usage.tokens`` counts them).
    """

    max_in_flight: int = 4
    requests_per_second: float | None = None
    burst: int | None = None
    tokens_per_minute: float | None = None

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1; got {self.max_in_flight}")
        for name in ("requests_per_second", "tokens_per_minute", "burst"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive; got {value}")


class EndpointGate:
    """Admission to one endpoint: a concurrency slot, then request and token quotas."""

    def __init__(self, limits: EndpointLimits, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.max_in_flight)
        self.in_flight = 0
        rps = limits.requests_per_second
        self._requests = None if rps is None else TokenBucket(
            rps, limits.burst or max(1, math.ceil(rps)), clock=clock, sleep=sleep)
        tpm = limits.tokens_per_minute
        self._tokens = None if tpm is None else TokenBucket(tpm / 60.0, tpm, clock=clock, sleep=sleep)

    @property
    def free(self) -> int:
        """Concurrency slots not in use."""
        return self.limits.max_in_flight - self.in_flight

    @asynccontextmanager
    async def admit(self, tokens: int = 0) -> AsyncIterator[None]:
        """Hold a slot for one request costing ``tokens`` model tokens."""
        async with self._slots:
            self.in_flight += 1
            try:
                if self._requests is not None:
                    await self._requests.acquire(1)
                if self._tokens is not None and tokens > 0:
                    await self._tokens.acquire(tokens)
                yield
            finally:
                self.in_flight -= 1
