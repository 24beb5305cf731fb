"""The HTTP side of LMaaS: expose any Backend over the wire protocol (``lmaas-tune serve``)."""

from .app import ScoringService, create_app
from .batching import DynamicBatcher
from .config import ServerConfig, is_loopback, resolve_token
from .runner import RunningServer, serve

__all__ = ["DynamicBatcher", "RunningServer", "ScoringService", "ServerConfig", "create_app", "is_loopback",
           "resolve_token", "serve"]
