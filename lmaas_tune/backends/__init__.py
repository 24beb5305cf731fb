"""Backends: where candidate prompts get scored.

:mod:`.base` is the contract every backend keeps (and its value types), :mod:`.factory` builds one
from stored settings by name, :mod:`.traffic` is how a backend reports what a call cost on the
wire. The implementations live in :mod:`.local` (a model in this process), :mod:`.remote` (an
lmaas-tune service) and :mod:`.vllm` (a vLLM server), the last two on :mod:`.http`; they load on
first access, so importing this package loads neither torch nor aiohttp.
"""

from typing import TYPE_CHECKING, Any

from .base import Backend, BackendInfo, ModelKind, Query, ScoringBatch

if TYPE_CHECKING:
    from .local import DEFAULT_MODEL, EMBEDDED, LocalBackend, resolve_model
    from .remote import RemoteBackend
    from .vllm import VllmBackend

_LAZY = {"LocalBackend": ".local", "DEFAULT_MODEL": ".local", "EMBEDDED": ".local", "resolve_model": ".local",
         "RemoteBackend": ".remote", "VllmBackend": ".vllm"}

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "Backend", "BackendInfo", "LocalBackend", "ModelKind", "Query",
           "RemoteBackend", "ScoringBatch", "VllmBackend", "resolve_model"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
