"""Per-call traffic accounting: how a backend reports transport attempts, retries and bytes.

A caller that wants to know what one :meth:`Backend.score` call cost on the wire opens
``with metering() as meter:`` around it; a backend that talks to a service calls
:func:`record_traffic` for every HTTP attempt it makes (and every retry it sleeps before). The
meter travels in a context variable, so it follows the call into the tasks the backend spawns
and never mixes up concurrent calls. Backends that report nothing (a model in this process)
leave the meter at zero, and the caller counts the call itself as one attempt.

Retries are the backend's own business (the remote backend retries with tenacity); it reports each
one as it waits with :func:`record_retry`, which the caller may watch live (``on_retry``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

OnRetry = Callable[[str, float | None], None]


@dataclass
class TrafficMeter:
    """Counters for one metered call (mutable: the backend adds to it while the call runs)."""

    attempts: int = 0
    retries: int = 0
    failures: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    on_retry: OnRetry | None = None  # told (reason, delay in s) at every retry the backend makes


_CURRENT: ContextVar[TrafficMeter | None] = ContextVar("lmaas_tune_traffic_meter", default=None)


@contextmanager
def metering(on_retry: OnRetry | None = None) -> Iterator[TrafficMeter]:
    """Collect what the backend reports during the block into a fresh :class:`TrafficMeter`."""
    meter = TrafficMeter(on_retry=on_retry)
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)


def record_traffic(*, attempts: int = 0, retries: int = 0, failures: int = 0, bytes_up: int = 0, bytes_down: int = 0) -> None:
    """Add to the meter of the call in progress, if anyone is metering it."""
    meter = _CURRENT.get()
    if meter is None:
        return
    meter.attempts += attempts
    meter.retries += retries
    meter.failures += failures
    meter.bytes_up += bytes_up
    meter.bytes_down += bytes_down


def record_retry(reason: str, delay: float | None = None) -> None:
    """Count one retry of the call in progress and tell its watcher why, and how long it waits."""
    meter = _CURRENT.get()
    if meter is None:
        return
    meter.retries += 1
    if meter.on_retry is not None:
        meter.on_retry(reason, delay)
