"""Building a backend from plain settings (the CLI's options, or a run directory's config)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..registry import Registry
from .base import Backend
from .models import DEFAULT_MODEL


@dataclass(frozen=True)
class BackendSettings:
    """Which backend, which model, where and in what precision. Stored in run directories."""

    backend: str = "local"
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    kind: str | None = None
    token_budget: int = 2048

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BackendSettings":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _local(settings: BackendSettings) -> Backend:
    from .local import LocalBackend

    return LocalBackend.load(
        settings.model, device=settings.device, dtype=settings.dtype, kind=settings.kind,
        token_budget=settings.token_budget,
    )


BACKENDS: Registry[Callable[[BackendSettings], Backend]] = Registry("backend")
BACKENDS.add("local", _local)


def open_backend(settings: BackendSettings) -> Backend:
    """Load the backend the settings name (blocking: loading a model takes seconds)."""
    return BACKENDS.get(settings.backend)(settings)
