"""The scoring service: any :class:`Backend` behind the versioned JSON protocol (docs/protocol.md).

Routes (all JSON; every one but health needs the bearer token when one is configured):

=========================  =====================================================================
``GET  /v1/health``        liveness: ``{"status": "ok"}``
``GET  /v1/info``          model, limits, capabilities and protocol version
``PUT  /v1/batches/{key}`` register a batch under its content hash; answers its token lengths
``GET  /v1/batches/{key}`` whether a batch is registered (404 ``unknown_batch`` if not)
``POST /v1/score``         score a population (embeddings or z + projection) on a batch
``POST /v1/hidden-std``    per-layer hidden-state std on a batch (deep-prompt backends; BBTv2)
``POST /v1/embed-text``    input embeddings of a text's tokens (an initial prompt p0, ``--prompt-init``)
=========================  =====================================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiohttp import web

from lmaas_tune import __version__
from lmaas_tune.backends.base import Backend, ScoringBatch
from lmaas_tune.wire import PROTOCOL_VERSION, ServiceInfo, ServiceLimits, check_protocol, encode_array, require
from lmaas_tune.errors import ConfigError, InputTooLongError, LmaasTuneError, VerbalizerError, WireFormatError
from .auth import bearer_auth
from .batching import DynamicBatcher, QueueFullError, ShuttingDownError
from .config import ServerConfig
from .decoding import ScoreRequest, check_key, decode_batch_for, decode_score, read_json
from .problems import ApiError, error_middleware
from .store import BatchStore, ProjectionCache, StoredBatch


class ScoringService:
    """The state behind the routes: the backend, registered batches, projections, the batcher."""

    def __init__(self, backend: Backend, config: ServerConfig) -> None:
        self.backend, self.config = backend, config
        self.model = backend.info
        self.batches = BatchStore(config.max_batches)
        self.projections = ProjectionCache(config.max_cached_projections)
        self.batcher = DynamicBatcher(
            backend, window_s=config.batch_window_s, max_batch_prompts=config.max_batch_prompts,
            max_queue_prompts=config.max_queue_prompts, max_parallel=self.model.max_concurrency,
        )
        self.description = ServiceInfo(
            model=self.model,
            limits=ServiceLimits(
                max_body_bytes=config.max_body_bytes, max_prompts_per_request=config.max_prompts_per_request,
                max_queries_per_batch=config.max_queries_per_batch, max_label_words=config.max_label_words,
                max_projection_bytes=config.max_projection_bytes, max_queue_prompts=config.max_queue_prompts,
            ),
            server_version=__version__,
        )

    # -- routes ---------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"protocol": PROTOCOL_VERSION, "status": "ok"})

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(self.description.to_wire())

    async def put_batch(self, request: web.Request) -> web.Response:
        key = check_key(request.match_info["key"], "batch_key")
        body = await read_json(request, self.config.max_body_bytes)
        batch = decode_batch_for(require(body, "batch", "", dict), self.model, self.config)
        if batch.key != key:
            raise WireFormatError("batch_key", f"the batch's content hash is {batch.key}, not {key}")
        stored = await self._register(batch)
        return web.json_response(self._registration(stored))

    async def get_batch(self, request: web.Request) -> web.Response:
        key = check_key(request.match_info["key"], "batch_key")
        return web.json_response(self._registration(self._stored(key)))

    async def score(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.config.max_body_bytes)
        req = decode_score(body, self.model, self.config)
        if req.batch_key:
            stored = self._stored(req.batch_key)
        else:
            assert req.batch is not None  # decode_score sets exactly one of batch_key and batch
            stored = await self._register(req.batch)
        longest = max(stored.token_lengths) + req.prompt_length
        if longest > self.model.max_length:
            raise WireFormatError(req.length_field, f"a {req.prompt_length}-token prompt and the longest query "
                                                    f"({longest - req.prompt_length} tokens) exceed the model limit of "
                                                    f"{self.model.max_length} tokens")
        prompts = await self._prompts(req)
        logits = await self._run(prompts, stored.batch, req)
        p = len(logits)
        n = len(stored.batch)
        usage = {"prompts": p, "examples": n, "forward_rows": p * n,
                 "tokens": p * (sum(stored.token_lengths) + n * req.prompt_length)}
        return web.json_response({"protocol": PROTOCOL_VERSION, "batch_key": stored.batch.key,
                                  "logits": encode_array(logits, "float32"), "usage": usage})

    async def hidden_std(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.config.max_body_bytes)
        stored = self._stored(check_key(require(body, "batch_key", "", str), "batch_key"))
        if not self.model.supports_deep_prompts:
            raise ApiError(404, "not_supported", "this service's backend does not take deep prompts", field="batch_key")
        std = await self.backend.hidden_state_std(stored.batch)
        return web.json_response({"protocol": PROTOCOL_VERSION, "batch_key": stored.batch.key, "std": list(std)})

    async def embed_text(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.config.max_body_bytes)
        check_protocol(body)
        text = require(body, "text", "", str)
        if not text.strip():
            raise WireFormatError("text", "must hold at least one token")
        try:
            rows = await self.backend.embed_text(text)
        except ConfigError as exc:
            raise ApiError(404, "not_supported", str(exc), field="text") from None
        if len(rows) > self.model.max_length:
            raise WireFormatError("text", f"has {len(rows)} tokens; the model takes at most {self.model.max_length}")
        return web.json_response({"protocol": PROTOCOL_VERSION, "embeddings": encode_array(rows, "float32")})

    # -- helpers ----------------------------------------------------------------------------------

    def _stored(self, key: str) -> StoredBatch:
        stored = self.batches.get(key)
        if stored is None:
            raise ApiError(404, "unknown_batch", f"batch {key} is not registered here; PUT /v1/batches/{key} first",
                           field="batch_key")
        return stored

    async def _register(self, batch: ScoringBatch) -> StoredBatch:
        stored = self.batches.get(batch.key)
        if stored is not None:
            return stored
        try:
            lengths = tuple(int(x) for x in await self.backend.token_lengths(batch))
        except VerbalizerError as exc:
            raise WireFormatError("batch.label_words", str(exc)) from None
        except (ConfigError, InputTooLongError) as exc:
            raise WireFormatError("batch", str(exc)) from None
        stored = StoredBatch(batch, lengths)
        self.batches.put(stored)
        return stored

    @staticmethod
    def _registration(stored: StoredBatch) -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "batch_key": stored.batch.key, "examples": len(stored.batch),
                "token_lengths": list(stored.token_lengths)}

    async def _prompts(self, req: ScoreRequest) -> np.ndarray | None:
        if req.z is not None and req.spec is not None:
            return await self.projections.project(req.spec, req.z)
        return req.prompts

    async def _run(self, prompts: np.ndarray | None, batch: ScoringBatch, req: ScoreRequest) -> np.ndarray:
        retry = self.config.retry_after_s
        try:
            return await self.batcher.score(prompts, batch)
        except QueueFullError as exc:
            raise ApiError(503, "overloaded", f"{exc}; retry after {retry} s", retry_after=retry) from None
        except ShuttingDownError as exc:
            raise ApiError(503, "shutting_down", str(exc), retry_after=retry) from None
        except InputTooLongError as exc:
            raise WireFormatError(req.length_field, str(exc)) from None
        except LmaasTuneError as exc:
            if isinstance(exc, ConfigError):
                raise WireFormatError("prompts", str(exc)) from None
            raise


SERVICE = web.AppKey("service", ScoringService)


def create_app(backend: Backend, config: ServerConfig = ServerConfig()) -> web.Application:
    """The aiohttp application serving ``backend``; its batcher drains on cleanup (after in-flight requests)."""
    service = ScoringService(backend, config)
    app = web.Application(middlewares=[error_middleware, bearer_auth(config.token)],
                          client_max_size=config.max_body_bytes)
    app[SERVICE] = service
    app.router.add_get("/v1/health", service.health)
    app.router.add_get("/v1/info", service.info)
    app.router.add_put("/v1/batches/{key}", service.put_batch)
    app.router.add_get("/v1/batches/{key}", service.get_batch)
    app.router.add_post("/v1/score", service.score)
    app.router.add_post("/v1/hidden-std", service.hidden_std)
    app.router.add_post("/v1/embed-text", service.embed_text)

    async def drain(_app: web.Application) -> None:
        await service.batcher.aclose()

    app.on_cleanup.append(drain)
    return app
