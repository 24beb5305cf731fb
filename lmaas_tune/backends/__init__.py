"""Backends: where candidate prompts get scored."""

from .base import Backend, BackendInfo, ModelKind, Query, ScoringBatch
from .local import LocalBackend
from .models import DEFAULT_MODEL, EMBEDDED, resolve_model

__all__ = [
    "DEFAULT_MODEL", "EMBEDDED", "Backend", "BackendInfo", "LocalBackend", "ModelKind", "Query",
    "ScoringBatch", "resolve_model",
]
