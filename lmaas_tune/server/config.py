"""How a scoring service is configured: address, token, request limits, batching and queueing."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from lmaas_tune.errors import ConfigError

MiB = 1024 * 1024


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(token_file: str | Path | None = None, token_env: str | None = None) -> str | None:
    """The bearer token from a file (first line) or an environment variable; ``None`` if neither is given."""
    if token_file is not None and token_env is not None:
        raise ConfigError("give the token either as --token-file or as --token-env, not both")
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
        if not text:
            raise ConfigError(f"the token file {path} is empty")
        return text.splitlines()[0].strip()
    if token_env is not None:
        value = os.environ.get(token_env, "").strip()
        if not value:
            raise ConfigError(f"--token-env {token_env}: that environment variable is not set (or empty)")
        return value
    return None


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``lmaas-tune serve`` takes besides the model.

    A token is required unless the service binds to a loopback address. ``batch_window_s`` is how
    long the first request of a forward pass waits for others to join it; a pass holds at most
    ``max_batch_prompts`` candidates. At most ``max_queue_prompts`` candidates wait or run at
    once; beyond that requests are answered 503 with ``Retry-After: retry_after_s``.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = field(default=None, repr=False)
    max_body_bytes: int = 32 * MiB
    max_prompts_per_request: int = 256
    max_queries_per_batch: int = 4096
    max_label_words: int = 64
    max_batches: int = 256
    max_projection_bytes: int = 512 * MiB
    max_cached_projections: int = 2
    batch_window_s: float = 0.005
    max_batch_prompts: int = 64
    max_queue_prompts: int = 1024
    retry_after_s: int = 1
    shutdown_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.token and not is_loopback(self.host):
            raise ConfigError(
                f"serving on {self.host} (not a loopback address) needs a bearer token: pass --token-file or "
                f"--token-env, or bind to 127.0.0.1"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535; got {self.port}")
        for name in ("max_body_bytes", "max_prompts_per_request", "max_queries_per_batch", "max_label_words",
                     "max_batches", "max_projection_bytes", "max_cached_projections", "max_batch_prompts",
                     "max_queue_prompts", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.batch_window_s < 0 or self.shutdown_timeout_s < 0:
            raise ConfigError("batch_window_s and shutdown_timeout_s must not be negative")
        if self.max_queue_prompts < self.max_prompts_per_request:
            raise ConfigError(
                f"max_queue_prompts ({self.max_queue_prompts}) must hold at least one full request "
                f"(max_prompts_per_request = {self.max_prompts_per_request})"
            )
