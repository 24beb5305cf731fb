"""The part of a backend over HTTP that does not depend on what it says: connecting and closing."""

from __future__ import annotations

import abc
import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import aiohttp

from lmaas_tune.backends.base import Backend, BackendInfo
from lmaas_tune.errors import ConfigError
from .pool import EndpointPool


class HttpBackend(Backend):
    """A backend whose model sits behind the endpoints of an :class:`EndpointPool`.

    Subclasses set ``self._pool`` and ``self._info = None`` in their constructor and implement
    :meth:`_connect`, which checks every endpoint and sets ``self._info``. Construct, then
    ``await backend.connect()`` (or ``async with``), or use the blocking :meth:`open`.
    """

    _pool: EndpointPool[Any]
    _info: BackendInfo | None
    #: what to call this backend in messages ("the remote backend")
    label = "this backend"

    @abc.abstractmethod
    async def _connect(self, session: aiohttp.ClientSession) -> None:
        """Check the endpoints over ``session`` and set ``self._info``."""

    @classmethod
    def open(cls, *args: Any, **kwargs: Any) -> Self:
        """Blocking: construct and connect, in a helper thread with its own event loop (and session)."""
        backend = cls(*args, **kwargs)

        async def check() -> None:
            async with backend._pool.new_session() as session:
                await backend._connect(session)

        with ThreadPoolExecutor(1, thread_name_prefix="lmaas-http-open") as pool:
            pool.submit(asyncio.run, check()).result()
        return backend

    async def connect(self) -> Self:
        """Check the endpoints; if that fails the backend is closed (nothing stays open) and the error raised."""
        try:
            await self._connect(self._pool.session())
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aenter__(self) -> Self:
        if self._info is None:
            await self.connect()
        return self

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._pool.urls

    @property
    def info(self) -> BackendInfo:
        if self._info is None:
            raise ConfigError(f"{self.label} is not connected; use `await backend.connect()` or "
                              f"{type(self).__name__}.open()")
        return self._info

    async def aclose(self) -> None:
        """Close the session and its connections. Idempotent; the backend cannot be used afterwards."""
        await self._pool.aclose()
