"""When and how long the remote backend waits before trying a request again.

Retried: HTTP 408, 429 and 5xx, transport errors (refused, reset, closed mid-response, timed
out) and malformed responses, i.e. every :class:`~lmaas_tune.errors.RemoteError` whose
``retryable`` is true. Not retried: other 4xx (the request itself is wrong), 401/403.

Delay before retry ``n`` (1-based): the service's Retry-After (seconds or an HTTP date) capped
at ``max_retry_after``; otherwise ``min(base_delay * 2**(n-1), max_delay)`` scaled by a jitter
factor drawn from [0.75, 1] (the openai-python schedule).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from lmaas_tune.errors import ConfigError


@dataclass(frozen=True)
class RetryConfig:
    """``max_attempts`` HTTP attempts per request (first try included)."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1; got {self.max_attempts}")
        if min(self.base_delay, self.max_delay, self.max_retry_after) < 0:
            raise ConfigError("retry delays must not be negative")

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_retry_after)
        backoff = min(self.base_delay * 2 ** (retry - 1), self.max_delay)
        return backoff * (1.0 - 0.25 * rng.random())


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for: delta-seconds or an HTTP date; ``None`` if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())
