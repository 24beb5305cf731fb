"""The remote backend: an aiohttp client of an lmaas-tune service (:mod:`lmaas_tune.wire`).

:mod:`.client` is the Backend; endpoints, limits, retries and the typed HTTP errors come from
:mod:`lmaas_tune.backends.http`, which it shares with the vLLM client. It never imports torch.
"""

from lmaas_tune.backends.http import EndpointLimits, RetryConfig, Timeouts

from .client import DEFAULT_TOKEN_ENV, UPLOADS, RemoteBackend, token_from_env

__all__ = ["DEFAULT_TOKEN_ENV", "UPLOADS", "EndpointLimits", "RemoteBackend", "RetryConfig", "Timeouts",
           "token_from_env"]
