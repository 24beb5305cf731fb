"""What the service remembers between requests: registered batches and built projections."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from lmaas_tune.backends.base import ScoringBatch
from lmaas_tune.projection import DeepProjection, DeepProjectionSpec, build_projection
from lmaas_tune.projection import Projection, ProjectionSpec


@dataclass(frozen=True)
class StoredBatch:
    """A registered batch and the tokens each of its queries takes without a prompt."""

    batch: ScoringBatch
    token_lengths: tuple[int, ...]


class BatchStore:
    """Registered batches by content hash, least recently used evicted beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, StoredBatch] = OrderedDict()

    def get(self, key: str) -> StoredBatch | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, item: StoredBatch) -> None:
        self._items[item.batch.key] = item
        self._items.move_to_end(item.batch.key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def forget(self, key: str) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class ProjectionCache:
    """Projections by spec, built once in a worker thread (concurrent requests share the build)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[ProjectionSpec | DeepProjectionSpec, asyncio.Future[Projection | DeepProjection]] = OrderedDict()

    async def get(self, spec: ProjectionSpec | DeepProjectionSpec) -> Projection | DeepProjection:
        fut = self._items.get(spec)
        if fut is None or (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            fut = asyncio.ensure_future(asyncio.to_thread(build_projection, spec))
            self._items[spec] = fut
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        self._items.move_to_end(spec)
        return await asyncio.shield(fut)

    async def project(self, spec: ProjectionSpec | DeepProjectionSpec, z: np.ndarray) -> np.ndarray:
        """The prompts ``[P, L, D]`` for ``z [P, d]`` (deep: ``[P, N, L, D]`` for ``[P, N, d]``): exactly
        what :class:`Projection` (:class:`DeepProjection`) computes on the client."""
        projection = await self.get(spec)
        return await asyncio.to_thread(projection, z)
