"""The remote backend: an aiohttp client of an lmaas-tune service (:mod:`lmaas_tune.wire`).

Its parts: :mod:`.client` (the Backend), :mod:`.transport` (one HTTP exchange and its typed
errors), :mod:`.retrying` (when and how long to wait before trying again), :mod:`.ratelimit`
(per-endpoint request, token and concurrency limits). It never imports torch.
"""

from .client import DEFAULT_TOKEN_ENV, UPLOADS, RemoteBackend, Timeouts, token_from_env
from .ratelimit import EndpointLimits
from .retrying import RetryConfig

__all__ = ["DEFAULT_TOKEN_ENV", "UPLOADS", "EndpointLimits", "RemoteBackend", "RetryConfig", "Timeouts",
           "token_from_env"]
