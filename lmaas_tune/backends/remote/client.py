"""A backend that scores prompts on one or more ``lmaas-tune serve`` services over HTTP.

The wire protocol is :mod:`lmaas_tune.wire` (``docs/protocol.md``). One
``aiohttp.ClientSession`` (keep-alive, explicit connect and request timeouts) serves every
endpoint; each endpoint has its own :class:`EndpointGate` (concurrency cap, request and token
buckets). Calls are spread over the endpoints by free capacity, so several services share one
population; a retry prefers another endpoint than the one that just failed.

Retries (:mod:`.retrying`) happen here, per HTTP request, with tenacity; every attempt, retry,
failure and byte is reported on the caller's traffic meter (:mod:`.traffic`), which the
population scheduler adds to the budget ledger. Scoring is idempotent, so retrying a request
whose answer was lost is safe; the ledger charges a candidate only once its logits are back.

Malformed responses (the decision): a 2xx answer that is not JSON, misses a field, names another
batch, has the wrong shape or dtype, or is truncated is a :class:`BadResponseError`. It is retried
like a transport error (a proxy or a dying worker is the likely cause), never used and never
charged; when the attempts run out the error reaches the caller. NaN or infinite logits in a
well-formed answer are the model's output and are passed on (the loss decides what they mean).

Batches are registered once per endpoint (``PUT /v1/batches/{key}``) and scored by content hash;
a service that lost a batch (restart, eviction) answers ``unknown_batch`` and the batch is sent
again. Upload modes: ``embeddings`` sends the prompts; ``projection`` sends z and the projection
spec (the service rebuilds the same prompts; about d instead of L*D numbers per candidate);
``auto`` uses projection where every endpoint supports it and the projection has no base prompt.
Deep prompts (``[P, N, L, D]``) travel the same way when every endpoint declares ``deep_prompts``:
as embeddings, or as per-layer z (``[P, N, d]``) with a deep projection spec.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import numpy as np

from lmaas_tune.errors import (
    BadResponseError, ConfigError, IncompatibleServiceError, RejectedError, WireFormatError,
)
from lmaas_tune.projection import DeepProjection, DeepProjectionSpec
from lmaas_tune.projection import Projection, ProjectionSpec
from lmaas_tune.backends.base import BackendInfo, ScoringBatch, check_prompts
from lmaas_tune.backends.http.backend import HttpBackend
from lmaas_tune.backends.http import (
    Endpoint, EndpointGate, EndpointLimits, EndpointPool, RetryConfig, Timeouts, exchange,
)
from lmaas_tune.backends.http.ratelimit import Sleep
from lmaas_tune.backends.traffic import record_traffic
from lmaas_tune.wire import (
    DTYPES, PROTOCOL_VERSION, SUPPORTED_PROTOCOLS, ServiceInfo, check_protocol, check_type, decode_array, encode_array,
    encode_batch, encode_spec, require,
)

log = logging.getLogger("lmaas_tune")

DEFAULT_TOKEN_ENV = "LMAAS_TUNE_TOKEN"
UPLOADS = ("auto", "embeddings", "projection")


class _Endpoint(Endpoint):
    """One service URL: its gate, its description and the batches it holds."""

    def __init__(self, url: str, gate: EndpointGate) -> None:
        super().__init__(url, gate)
        self.service: ServiceInfo | None = None
        self.registered: set[str] = set()
        self.registering = asyncio.Lock()


def token_from_env(name: str | None) -> str | None:
    """The bearer token in environment variable ``name`` (default ``LMAAS_TUNE_TOKEN``, optional)."""
    if name is None:
        return os.environ.get(DEFAULT_TOKEN_ENV) or None
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"--token-env {name}: that environment variable is not set (or empty); export the token first")
    return value


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class RemoteBackend(HttpBackend):
    """Scores prompts on remote services; see the module docstring.

    Construct, then describe the services with ``await backend.connect()`` (or ``async with``),
    or use the blocking :meth:`open`. ``sleep`` replaces the retry and rate-limit sleeps (tests).
    """

    label = "the remote backend"

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        token: str | None = None,
        limits: EndpointLimits = EndpointLimits(),
        retry: RetryConfig = RetryConfig(),
        timeouts: Timeouts = Timeouts(),
        upload: str = "auto",
        wire_dtype: str = "float32",
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if upload not in UPLOADS:
            raise ConfigError(f"upload must be one of {UPLOADS}; got {upload!r}")
        if wire_dtype not in DTYPES:
            raise ConfigError(f"wire dtype must be one of {sorted(DTYPES)}; got {wire_dtype!r}")
        self._pool = EndpointPool(endpoints, _Endpoint, server="`lmaas-tune serve`", token=token, limits=limits,
                                  retry=retry, timeouts=timeouts, sleep=sleep)
        self._eps = self._pool.endpoints
        self._upload, self._dtype = upload, wire_dtype
        self._info: BackendInfo | None = None
        self._lengths: dict[str, tuple[int, ...]] = {}

    # -- connecting ---------------------------------------------------------------------------

    @property
    def upload_mode(self) -> str:
        """``embeddings`` or ``projection``, once connected."""
        self.info  # noqa: B018 - raises when not connected
        return self._upload

    async def _connect(self, session: aiohttp.ClientSession) -> None:
        """Fetch ``/v1/info`` from every endpoint and check they serve the same model."""
        async def fetch(ep: _Endpoint) -> ServiceInfo:
            answer = await exchange(session, "GET", ep.url + "/v1/info", server=self._pool.server)
            protocol = answer.get("protocol")
            if isinstance(protocol, int) and protocol not in SUPPORTED_PROTOCOLS:
                raise IncompatibleServiceError(
                    f"{ep.url} speaks protocol version {protocol}; this lmaas-tune speaks {list(SUPPORTED_PROTOCOLS)}: "
                    f"upgrade the older of the two", endpoint=ep.url)
            try:
                return ServiceInfo.from_wire(answer)
            except WireFormatError as exc:
                raise BadResponseError(f"GET {ep.url}/v1/info: {exc}", endpoint=ep.url) from None

        # a service that cannot be reached at all when we start is most likely a wrong URL: retry once, not for minutes
        services = [await self._pool.call("describe", fetch, pinned=ep, attempts=min(2, self._pool.retry.max_attempts))
                    for ep in self._eps]
        first = services[0].model
        for ep, svc in zip(self._eps, services):
            m = svc.model
            if (m.model_id, m.kind, m.hidden_size, m.embedding_std, m.max_length) != (
                    first.model_id, first.kind, first.hidden_size, first.embedding_std, first.max_length):
                raise ConfigError(f"{ep.url} serves {m.model_id} ({m.kind.value}, hidden {m.hidden_size}) but "
                                  f"{self._eps[0].url} serves {first.model_id}; every endpoint must serve the same model")
            if self._dtype not in svc.dtypes:
                raise ConfigError(f"{ep.url} does not accept {self._dtype} arrays (it takes {list(svc.dtypes)})")
            ep.service = svc
        projection_ok = all("projection" in s.upload_modes for s in services)
        if self._upload == "projection" and not projection_ok:
            raise ConfigError("upload 'projection' needs every endpoint to rebuild projections; use 'embeddings'")
        if self._upload == "auto":
            self._upload = "projection" if projection_ok else "embeddings"
        self._info = BackendInfo(
            model_id=first.model_id, kind=first.kind, hidden_size=first.hidden_size, num_layers=first.num_layers,
            embedding_std=first.embedding_std, max_length=first.max_length, device="remote", dtype=first.dtype,
            max_concurrency=self._pool.max_in_flight, max_prompts_per_call=None,
            supports_projection=projection_ok,
            supports_deep_prompts=all(s.model.supports_deep_prompts for s in services),
            extra={"endpoints": " ".join(self.endpoints), "upload": self._upload},
        )

    # -- batches ----------------------------------------------------------------------------------

    async def _register(self, ep: _Endpoint, batch: ScoringBatch) -> None:
        if batch.key in ep.registered:
            return
        async with ep.registering:
            if batch.key in ep.registered:
                return
            answer = await self._pool.send(ep, "PUT", f"/v1/batches/{batch.key}",
                                      _dumps({"protocol": PROTOCOL_VERSION, "batch": encode_batch(batch)}))
            try:
                if require(answer, "batch_key", "", str) != batch.key:
                    raise WireFormatError("batch_key", "does not match the batch sent")
                lengths = tuple(int(x) for x in require(answer, "token_lengths", "", list))
                if len(lengths) != len(batch):
                    raise WireFormatError("token_lengths", f"holds {len(lengths)} lengths for {len(batch)} queries")
            except (WireFormatError, TypeError, ValueError) as exc:
                raise BadResponseError(f"PUT {ep.url}/v1/batches: malformed answer: {exc}", endpoint=ep.url) from None
            self._lengths[batch.key] = lengths
            ep.registered.add(batch.key)

    async def token_lengths(self, batch: ScoringBatch) -> tuple[int, ...]:
        if batch.key not in self._lengths:
            parts = self._query_parts(batch)
            if len(parts) > 1:  # more queries than a service takes at once: register the parts
                lengths: list[int] = []
                for part in parts:
                    lengths.extend(await self.token_lengths(part))
                self._lengths[batch.key] = tuple(lengths)
            else:
                await self._pool.call("registering a batch", lambda ep: self._register(ep, batch))
        return self._lengths[batch.key]

    def _query_parts(self, batch: ScoringBatch) -> list[ScoringBatch]:
        """``batch`` split into pieces the services accept (``max_queries_per_batch``)."""
        step = min(e.service.limits.max_queries_per_batch for e in self._eps if e.service is not None)
        if len(batch) <= step:
            return [batch]
        return [batch.subset(range(lo, min(lo + step, len(batch)))) for lo in range(0, len(batch), step)]

    # -- scoring ------------------------------------------------------------------------------------

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        arr = check_prompts(prompts, self.info)
        if arr is not None and arr.shape[-2] == 0:
            arr = None
        if arr is None:
            pieces = self._query_parts(batch)
            outs = [await self._score_part(piece, {"prompts": None}, 1, 0) for piece in pieces]
            return np.concatenate(outs, axis=1)
        return await self._score_rows(batch, arr, lambda rows: {"prompts": encode_array(rows, self._dtype)}, arr.shape[-2])

    async def score_projected(
        self, z: np.ndarray, projection: Projection | DeepProjection, batch: ScoringBatch, *,
        prompts: np.ndarray | None = None,
    ) -> np.ndarray:
        spec = projection.spec
        if self.upload_mode != "projection" or projection.base_prompt is not None or not self._fits(spec):
            return await super().score_projected(z, projection, batch, prompts=prompts)
        if spec.hidden_size != self.info.hidden_size:
            raise ConfigError(f"projection hidden size {spec.hidden_size} does not match the model's {self.info.hidden_size}")
        zz = np.atleast_2d(np.asarray(z, dtype=np.float32))
        if isinstance(spec, DeepProjectionSpec):  # flat candidates travel as [P, layers, d]
            if not self.info.supports_deep_prompts:
                raise ConfigError(f"{self.endpoints[0]} does not take deep (per-layer) prompts")
            if zz.ndim != 2 or zz.shape[1] != spec.dim:
                raise ConfigError(f"z has shape {zz.shape}; the deep projection expects [P, {spec.dim}]")
            zz = zz.reshape(len(zz), spec.layers, spec.intrinsic_dim)
        elif zz.ndim != 2 or zz.shape[1] != spec.intrinsic_dim:
            raise ConfigError(f"z has shape {zz.shape}; the projection expects [P, {spec.intrinsic_dim}]")
        wire_spec = encode_spec(spec)
        return await self._score_rows(
            batch, zz, lambda rows: {"z": encode_array(rows, self._dtype), "projection": wire_spec}, spec.prompt_length)

    def _fits(self, spec: ProjectionSpec | DeepProjectionSpec) -> bool:
        return all(e.service is not None and spec.nbytes <= e.service.limits.max_projection_bytes for e in self._eps)

    def _rows_per_request(self, row_values: int) -> int:
        limits = [e.service.limits for e in self._eps if e.service is not None]
        by_count = min(lim.max_prompts_per_request for lim in limits)
        row_bytes = 4 * row_values * DTYPES[self._dtype].itemsize // 3 + 8  # base64 of one row
        by_bytes = (min(lim.max_body_bytes for lim in limits) - 16_384) // row_bytes
        return max(1, min(by_count, by_bytes))

    async def _score_rows(
        self, batch: ScoringBatch, rows: np.ndarray, fields: Callable[[np.ndarray], dict[str, Any]], plen: int
    ) -> np.ndarray:
        """Candidates in requests of at most what a service takes, sent together, joined in order."""
        step = self._rows_per_request(int(np.prod(rows.shape[1:])))
        spans = [(lo, min(lo + step, len(rows))) for lo in range(0, len(rows), step)]
        pieces = self._query_parts(batch)
        if len(spans) == 1 and len(pieces) == 1:
            return await self._score_part(batch, fields(rows), len(rows), plen)
        async with asyncio.TaskGroup() as group:
            grid = [[group.create_task(self._score_part(piece, fields(rows[lo:hi]), hi - lo, plen)) for piece in pieces]
                    for lo, hi in spans]
        return np.concatenate([np.concatenate([t.result() for t in row], axis=1) for row in grid], axis=0)

    async def _score_part(self, batch: ScoringBatch, fields: dict[str, Any], n: int, plen: int) -> np.ndarray:
        payload = _dumps({"protocol": PROTOCOL_VERSION, "batch_key": batch.key, **fields})
        expected = (n, len(batch), len(batch.label_words))

        async def once(ep: _Endpoint) -> np.ndarray:
            await self._register(ep, batch)
            tokens = n * (sum(self._lengths[batch.key]) + plen * len(batch))
            try:
                answer = await self._pool.send(ep, "POST", "/v1/score", payload, tokens)
            except RejectedError as exc:
                if exc.code != "unknown_batch":
                    raise
                log.info("%s forgot batch %s; sending it again", ep.url, batch.key[:12])
                record_traffic(failures=1, retries=1)
                ep.registered.discard(batch.key)
                await self._register(ep, batch)
                answer = await self._pool.send(ep, "POST", "/v1/score", payload, tokens)
            return _read_logits(answer, batch.key, expected, ep.url)

        return await self._pool.call("scoring", once)

    async def hidden_state_std(self, batch: ScoringBatch) -> tuple[float, ...]:
        """The service's measurement (``POST /v1/hidden-std``); see :meth:`Backend.hidden_state_std`."""
        if not self.info.supports_deep_prompts:
            return await super().hidden_state_std(batch)
        await self.token_lengths(batch)
        payload = _dumps({"protocol": PROTOCOL_VERSION, "batch_key": batch.key})

        async def once(ep: _Endpoint) -> tuple[float, ...]:
            await self._register(ep, batch)
            answer = await self._pool.send(ep, "POST", "/v1/hidden-std", payload)
            try:
                check_protocol(answer)
                values = tuple(check_type(x, "std[]", float) for x in require(answer, "std", "", list))
                if len(values) != self.info.num_layers or not all(np.isfinite(values)):
                    raise WireFormatError("std", f"must hold {self.info.num_layers} finite numbers")
            except WireFormatError as exc:
                raise BadResponseError(f"POST {ep.url}/v1/hidden-std: malformed answer: {exc}", endpoint=ep.url) from None
            return values

        return await self._pool.call("measuring hidden states", once)

    async def embed_text(self, text: str) -> np.ndarray:
        """The service's input embeddings of ``text`` (``POST /v1/embed-text``); see :meth:`Backend.embed_text`."""
        payload = _dumps({"protocol": PROTOCOL_VERSION, "text": text})

        async def once(ep: _Endpoint) -> np.ndarray:
            answer = await self._pool.send(ep, "POST", "/v1/embed-text", payload)
            try:
                check_protocol(answer)
                rows = decode_array(require(answer, "embeddings", "", dict), "embeddings", ndim=2)
                if rows.shape[1] != self.info.hidden_size:
                    raise WireFormatError("embeddings.shape", f"is {list(rows.shape)}; rows must have "
                                                              f"{self.info.hidden_size} numbers")
            except WireFormatError as exc:
                raise BadResponseError(f"POST {ep.url}/v1/embed-text: malformed answer: {exc}", endpoint=ep.url) from None
            return rows

        return await self._pool.call("embedding text", once)



def _read_logits(answer: dict[str, Any], key: str, expected: tuple[int, int, int], url: str) -> np.ndarray:
    try:
        check_protocol(answer)
        if answer.get("batch_key") != key:
            raise WireFormatError("batch_key", "does not name the batch that was sent")
        logits = decode_array(require(answer, "logits", "", dict), "logits", ndim=3, finite=False)
        if logits.shape != expected:
            raise WireFormatError("logits.shape", f"is {list(logits.shape)}; expected {list(expected)}")
    except WireFormatError as exc:
        raise BadResponseError(f"POST {url}/v1/score: malformed answer: {exc}", status_code=200, endpoint=url) from None
    return logits
