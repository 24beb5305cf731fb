"""Reading requests: the JSON body within the size limit, and the fields of a score request.

Every check names the field at fault: a body that is not JSON is 400 (``body``), an unsupported
protocol version 400 (``protocol``), every other malformed or out-of-range field 422 with its
dotted path (raised as :class:`~lmaas_tune.errors.WireFormatError`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from lmaas_tune.backends.base import BackendInfo, ModelKind, ScoringBatch
from lmaas_tune.wire import check_protocol, decode_array, decode_batch, decode_spec, require
from lmaas_tune.projection import DeepProjectionSpec
from lmaas_tune.errors import WireFormatError
from lmaas_tune.projection import ProjectionSpec
from .config import ServerConfig
from .problems import ApiError

_KEY = re.compile(r"^[0-9a-f]{64}$")


async def read_json(request: web.Request, max_body_bytes: int) -> dict[str, Any]:
    """The request's JSON object; 413 beyond ``max_body_bytes``, 400 if it is not a JSON object."""
    declared = request.content_length
    if declared is not None and declared > max_body_bytes:
        raise ApiError(413, "body_too_large", f"the body has {declared} bytes; the limit is {max_body_bytes}", field="body")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body_too_large", f"the body exceeds the limit of {max_body_bytes} bytes", field="body") from None
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc})", field="body") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body nests too deeply to be a protocol message", field="body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object", field="body")
    try:
        check_protocol(body)
    except WireFormatError as exc:
        raise ApiError(400, "unsupported_protocol", exc.reason, field="protocol") from None
    return body


def check_key(key: Any, field: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise WireFormatError(field, "must be a batch content hash: 64 lowercase hex digits (sha256)")
    return key


def decode_batch_for(obj: Any, info: BackendInfo, config: ServerConfig, path: str = "batch") -> ScoringBatch:
    """A batch the model can read: causal models need text before the label slot and no suffix."""
    batch = decode_batch(obj, path, max_queries=config.max_queries_per_batch, max_label_words=config.max_label_words)
    if info.kind is ModelKind.CAUSAL:
        for i, q in enumerate(batch.queries):
            if q.suffix:
                raise WireFormatError(f"{path}.queries[{i}].suffix", "must be empty for a causal LM (the label is the next token)")
            if not q.prefix.strip():
                raise WireFormatError(f"{path}.queries[{i}].prefix", "must not be empty for a causal LM")
    return batch


@dataclass(frozen=True)
class ScoreRequest:
    """A decoded ``POST /v1/score``: which batch, and the prompts in one of the upload modes.

    Exactly one of ``batch_key`` and ``batch`` is set. ``prompts`` ([P, L, D], deep [P, N, L, D]) for
    the embeddings mode, ``z`` ([P, d], deep [P, N, d]) and ``spec`` for the projection mode, none of
    them for the manual template.
    """

    batch_key: str | None
    batch: ScoringBatch | None
    prompts: np.ndarray | None = None
    z: np.ndarray | None = None
    spec: ProjectionSpec | DeepProjectionSpec | None = None

    @property
    def prompt_length(self) -> int:
        if self.prompts is not None:
            return int(self.prompts.shape[-2])
        return self.spec.prompt_length if self.spec is not None else 0

    @property
    def length_field(self) -> str:
        return "projection.prompt_length" if self.spec is not None else "prompts.shape"


def _count(n: int, field: str, config: ServerConfig) -> None:
    if not 1 <= n <= config.max_prompts_per_request:
        raise WireFormatError(field, f"must hold 1 to {config.max_prompts_per_request} candidates per request; got {n}")


def decode_score(body: dict[str, Any], info: BackendInfo, config: ServerConfig) -> ScoreRequest:
    has_key, has_batch = body.get("batch_key") is not None, body.get("batch") is not None
    if has_key and has_batch:
        raise WireFormatError("batch", "send either batch_key or batch, not both")
    if not (has_key or has_batch):
        raise WireFormatError("batch_key", "is required (or send the batch itself as batch)")
    key = check_key(body["batch_key"], "batch_key") if has_key else None
    batch = decode_batch_for(body["batch"], info, config) if has_batch else None
    has_prompts, has_z = body.get("prompts") is not None, body.get("z") is not None
    if has_prompts and has_z:
        raise WireFormatError("z", "send either prompts (embeddings) or z with projection, not both")
    if has_prompts:
        raw = body["prompts"]
        deep = isinstance(raw, dict) and isinstance(raw.get("shape"), list) and len(raw["shape"]) == 4
        if deep and not info.supports_deep_prompts:
            raise WireFormatError("prompts.shape", "deep (per-layer) prompts are not supported by this service's backend")
        prompts = decode_array(raw, "prompts", ndim=4 if deep else 3)
        p, length, d = prompts.shape[0], prompts.shape[-2], prompts.shape[-1]
        if deep and prompts.shape[1] != info.num_layers:
            raise WireFormatError("prompts.shape", f"a deep prompt needs {info.num_layers} layer slots; got {prompts.shape[1]}")
        _count(p, "prompts.shape", config)
        if d != info.hidden_size:
            raise WireFormatError("prompts.shape", f"hidden size {d} does not match the model's {info.hidden_size}")
        if length > info.max_length:
            raise WireFormatError("prompts.shape", f"prompt length {length} exceeds the model limit of {info.max_length}")
        return ScoreRequest(key, batch, prompts=prompts if length > 0 else None)
    if has_z:
        spec = decode_spec(require(body, "projection", "", dict))
        if spec.hidden_size != info.hidden_size:
            raise WireFormatError("projection.hidden_size", f"is {spec.hidden_size}; the model's is {info.hidden_size}")
        if spec.prompt_length > info.max_length:
            raise WireFormatError("projection.prompt_length", f"{spec.prompt_length} exceeds the model limit of {info.max_length}")
        if spec.nbytes > config.max_projection_bytes:
            raise WireFormatError("projection", f"needs a {spec.nbytes}-byte matrix; this service builds at most "
                                                f"{config.max_projection_bytes} bytes (use the embeddings upload)")
        if isinstance(spec, DeepProjectionSpec):
            return ScoreRequest(key, batch, z=_deep_z(body["z"], spec, info, config), spec=spec)
        z = decode_array(body["z"], "z", ndim=2)
        _count(z.shape[0], "z.shape", config)
        if z.shape[1] != spec.intrinsic_dim:
            raise WireFormatError("z.shape", f"z has dimension {z.shape[1]}; projection.intrinsic_dim is {spec.intrinsic_dim}")
        return ScoreRequest(key, batch, z=z, spec=spec)
    return ScoreRequest(key, batch)


def _deep_z(raw: Any, spec: DeepProjectionSpec, info: BackendInfo, config: ServerConfig) -> np.ndarray:
    """Per-layer z ``[P, N, d]`` for a deep projection spec, checked against the model."""
    if not info.supports_deep_prompts:
        raise WireFormatError("projection.kind", "deep (per-layer) prompts are not supported by this service's backend")
    if spec.layers != info.num_layers:
        raise WireFormatError("projection.scales", f"holds {spec.layers} scales; the model has {info.num_layers} layers")
    z = decode_array(raw, "z", ndim=3)
    _count(z.shape[0], "z.shape", config)
    if z.shape[1:] != (spec.layers, spec.intrinsic_dim):
        raise WireFormatError("z.shape", f"must be [P, {spec.layers}, {spec.intrinsic_dim}]; got {list(z.shape)}")
    return z
