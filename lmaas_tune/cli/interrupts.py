"""Stopping cleanly on SIGINT and SIGTERM.

:func:`run_until_signal` runs a coroutine as a task and turns the first SIGINT or SIGTERM into a
cancellation of that task, then raises :class:`~lmaas_tune.errors.RunInterrupted` (exit code
130 or 143). The fit loop lets the cancellation through after marking its last checkpoint, so the
run directory is left resumable. A second signal gets Python's default handling (Ctrl-C twice
raises ``KeyboardInterrupt`` at once; a second SIGTERM terminates the process); the files stay
consistent either way, since every one of them is written atomically.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from typing import TypeVar

from lmaas_tune.errors import RunInterrupted

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_until_signal(aw: Awaitable[T], signals: tuple[signal.Signals, ...] = SIGNALS) -> T:
    """Await ``aw``; the first of ``signals`` cancels it and raises :class:`RunInterrupted`.

    Handlers are installed only where the event loop can (the main thread on POSIX); elsewhere
    this is a plain ``await``.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(aw)
    received: list[int] = []
    installed: list[signal.Signals] = []

    def release() -> None:
        while installed:
            loop.remove_signal_handler(installed.pop())

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()
        release()

    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            pass
    try:
        return await task
    except asyncio.CancelledError:
        if received and task.cancelled():
            raise RunInterrupted(received[0]) from None
        raise
    finally:
        release()
