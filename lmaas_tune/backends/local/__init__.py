"""The local backend: a transformers model in this process (CPU or GPU).

Its parts: :mod:`.models` (resolving and loading a model, the embedded default), :mod:`.encoding`
(tokenising a scoring batch), :mod:`.prefix_cache` (shared-prefix keys and values),
:mod:`.fused_llama` (the fused CPU path), :mod:`.deep` (per-layer prompt injection for BBTv2).
``LocalBackend`` loads torch, so it is imported on first access.
"""

from typing import TYPE_CHECKING, Any

from .models import DEFAULT_MODEL, EMBEDDED, resolve_model

if TYPE_CHECKING:
    from .backend import LocalBackend

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "LocalBackend", "resolve_model"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from .backend import LocalBackend

        return LocalBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
