"""Shared-prefix key/values for causal LMs.

In a causal LM nothing before position t depends on what comes after it. A candidate's soft prompt
(with the leading special token before it, and the template text that every example starts with
after it, such as ``Review:``) is the same for every example it is scored on, so its keys and
values are computed once per candidate, in one short pass over the whole population, and every
(example, candidate) row then runs only its own text on top of the stored prefix.

For a population of P candidates on N examples with a prefix of s + L + c tokens, those positions
go through the model P times instead of P * N times: the linear layers (almost all the FLOPs)
shrink by the fraction (s + L + c) / (s + L + T) for texts of T tokens (c of them shared).
Attention from the text to the prefix is unchanged.

The transformers cache classes changed shape across releases; the two functions here are the only
place that knows about them.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]


def empty_cache(config: Any) -> Any:
    """A fresh cache for the prefix pass to fill."""
    try:
        return DynamicCache(config=config)
    except TypeError:  # releases whose DynamicCache takes no config
        return DynamicCache()


def key_values(cache: Any) -> KeyValues:
    """The per-layer ``(keys, values)`` a filled cache holds, each ``[batch, heads, length, head_dim]``."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return [(k, v) for k, v in zip(cache.key_cache, cache.value_cache)]


def cache_for_rows(kv: KeyValues, rows: torch.Tensor, config: Any) -> Any:
    """A new cache whose batch row ``r`` holds the prefix of candidate ``rows[r]``."""
    picked = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in kv]
    from_legacy = getattr(DynamicCache, "from_legacy_cache", None)
    if from_legacy is not None:
        return from_legacy(tuple(picked))
    try:
        return DynamicCache(ddp_cache_data=picked, config=config)
    except TypeError:
        return DynamicCache(ddp_cache_data=picked)
