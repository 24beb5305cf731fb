"""Building a backend from plain settings (the CLI's options, or a run directory's config)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from lmaas_tune.registry import Registry
from .base import Backend
from lmaas_tune.backends.local.models import DEFAULT_MODEL


@dataclass(frozen=True)
class BackendSettings:
    """Which backend, which model, where and in what precision. Stored in run directories.

    The remote backend reads ``endpoints`` (service URLs sharing each population), the name of
    the environment variable holding its bearer token (``token_env``; the token itself is never
    stored), the upload mode and its per-endpoint limits; ``model``/``device``/``dtype`` are the
    service's business then. The vLLM backend reads the same endpoint settings, plus ``model``
    (what the client embeds with: the model the servers loaded) and ``served_model`` (the name
    they serve it under; default: the one model they list).
    """

    backend: str = "local"
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    kind: str | None = None
    token_budget: int = 2048
    fused: bool = False
    compile: bool = False
    endpoints: tuple[str, ...] = ()
    token_env: str | None = None
    upload: str = "auto"
    max_in_flight: int = 4
    requests_per_second: float | None = None
    tokens_per_minute: float | None = None
    timeout_s: float = 120.0
    served_model: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BackendSettings":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _local(settings: BackendSettings) -> Backend:
    from lmaas_tune.backends.local.backend import LocalBackend

    return LocalBackend.load(
        settings.model, device=settings.device, dtype=settings.dtype, kind=settings.kind,
        token_budget=settings.token_budget, fused=settings.fused, compile=settings.compile,
    )


def _http(settings: BackendSettings) -> dict[str, Any]:
    """What every HTTP backend takes from the settings: token, per-endpoint limits, timeout."""
    from lmaas_tune.backends.http import EndpointLimits, Timeouts
    from lmaas_tune.backends.remote.client import token_from_env

    return {"token": token_from_env(settings.token_env), "timeouts": Timeouts(request=settings.timeout_s),
            "limits": EndpointLimits(settings.max_in_flight, settings.requests_per_second, None, settings.tokens_per_minute)}


def _remote(settings: BackendSettings) -> Backend:
    from lmaas_tune.backends.remote.client import RemoteBackend

    return RemoteBackend.open(settings.endpoints, upload=settings.upload, **_http(settings))


def _vllm(settings: BackendSettings) -> Backend:
    from lmaas_tune.backends.vllm import VllmBackend

    return VllmBackend.open(settings.endpoints, settings.model, served_model=settings.served_model,
                            dtype=settings.dtype, **_http(settings))


BACKENDS: Registry[Callable[[BackendSettings], Backend]] = Registry("backend")
BACKENDS.add("local", _local)
BACKENDS.add("remote", _remote)
BACKENDS.add("vllm", _vllm)
#: backends that talk to a service at --endpoint, and what should be serving there
SERVICES = {"remote": "`lmaas-tune serve`", "vllm": "`vllm serve MODEL --enable-prompt-embeds`"}


def open_backend(settings: BackendSettings) -> Backend:
    """Load the backend the settings name (blocking: loading a model takes seconds)."""
    return BACKENDS.get(settings.backend)(settings)
