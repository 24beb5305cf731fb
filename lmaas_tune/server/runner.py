"""Running the service: in the background of an event loop (tests, examples), or until a signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from lmaas_tune.backends.base import Backend
from .app import SERVICE, ScoringService, create_app
from .config import ServerConfig


class RunningServer:
    """A service listening on ``config.host:config.port`` (port 0: any free port) in this event loop.

    ``async with RunningServer(backend, config) as server: ... server.url ...``. Leaving the block
    (or :meth:`stop`) shuts down gracefully: the listening socket closes, idle connections close,
    requests in flight are answered (up to ``config.shutdown_timeout_s``), then the batcher drains.
    """

    def __init__(self, backend: Backend, config: ServerConfig = ServerConfig(), *, app: web.Application | None = None) -> None:
        self.config = config
        self.app = app if app is not None else create_app(backend, config)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def service(self) -> ScoringService:
        return self.app[SERVICE]

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections the service holds right now."""
        server = self._runner.server if self._runner else None
        return len(server.connections) if server is not None else 0

    async def start(self) -> "RunningServer":
        runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=self.config.shutdown_timeout_s,
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Graceful shutdown. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> "RunningServer":
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


async def serve(backend: Backend, config: ServerConfig, *, on_ready: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM (or ``stop`` is set), then shut down gracefully.

    The first signal starts the graceful shutdown; a second one is left to Python's default
    handling (Ctrl-C twice interrupts the wait for requests in flight).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def release() -> None:
        while installed:
            loop.remove_signal_handler(installed.pop())

    def on_signal() -> None:
        stop.set()
        release()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    try:
        async with RunningServer(backend, config) as server:
            if on_ready is not None:
                on_ready(server.url)
            await stop.wait()
    finally:
        release()
