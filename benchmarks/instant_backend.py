"""A model-free backend for the service benchmarks: logits from the prompts' means, no waiting.

Imported by benchmarks/remote.py and benchmarks/server_load.py (run as scripts from this folder).
"""

from __future__ import annotations

import numpy as np

from lmaas_tune.backends.base import (
    Backend,
    BackendInfo,
    ModelKind,
    ScoringBatch,
    check_prompts,
)


class InstantBackend(Backend):
    """Deterministic logits from the prompts' means; no model, no thread, no waiting."""

    def __init__(self, hidden: int = 64, max_concurrency: int = 64) -> None:
        self._info = BackendInfo(model_id="instant", kind=ModelKind.CAUSAL, hidden_size=hidden, num_layers=0,
                                 embedding_std=0.02, max_length=4096, max_concurrency=max_concurrency)

    @property
    def info(self) -> BackendInfo:
        return self._info

    async def token_lengths(self, batch: ScoringBatch) -> tuple[int, ...]:
        return tuple(len(q.prefix.split()) + 1 for q in batch.queries)

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        arr = check_prompts(prompts, self._info)
        means = np.zeros(1) if arr is None else arr.mean(axis=(1, 2))
        grid = np.arange(len(batch) * len(batch.label_words), dtype=np.float32).reshape(len(batch), -1)
        return (means[:, None, None] + grid[None]).astype(np.float32)
