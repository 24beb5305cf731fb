"""What every backend that talks HTTP shares: endpoints, limits, retries and typed errors.

:mod:`.backend` (connecting and closing a backend over HTTP), :mod:`.pool` (endpoints serving
one model, one aiohttp session, a retried request that moves to another endpoint),
:mod:`.transport` (one exchange and the typed error for each way it fails), :mod:`.retrying` (when
and how long to wait before trying again), :mod:`.ratelimit` (per-endpoint concurrency, request and
token limits). Used by :mod:`lmaas_tune.backends.remote` and
:mod:`lmaas_tune.backends.vllm`; it never imports torch.
"""

from .backend import HttpBackend
from .pool import Endpoint, EndpointPool, Timeouts, check_url
from .ratelimit import EndpointGate, EndpointLimits, TokenBucket
from .retrying import RetryConfig, parse_retry_after
from .transport import exchange

__all__ = ["Endpoint", "EndpointGate", "HttpBackend", "EndpointLimits", "EndpointPool", "RetryConfig", "Timeouts", "TokenBucket",
           "check_url", "exchange", "parse_retry_after"]
