"""The wire protocol's codec: arrays, batches, projection specs and service descriptions as JSON.

Shared by the server (:mod:`lmaas_tune.server`) and the remote backend, so both sides read and
write exactly the same shapes. Version :data:`PROTOCOL_VERSION`; ``docs/protocol.md`` is the
human-readable form of this module.

Arrays travel as ``{"dtype": "float32" | "float16", "shape": [...], "data": base64}`` where the
data is the array's little-endian bytes in C order. Decoders validate everything and raise
:class:`~lmaas_tune.errors.WireFormatError` naming the offending field as a dotted path
(``prompts.shape``, ``batch.queries[3].prefix``), which the server turns into a 4xx answer.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, WireFormatError
from lmaas_tune.projection import LAYER_SEED_STRIDE, DeepProjectionSpec
from lmaas_tune.projection import DISTRIBUTIONS, ProjectionSpec
from lmaas_tune.backends.base import BackendInfo, ModelKind, Query, ScoringBatch

PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = (1,)
DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
UPLOAD_MODES = ("embeddings", "projection")
MAX_DIM = 2**31 - 1  #: largest size of one array dimension on the wire


# -- small typed getters -------------------------------------------------------------------------


def require(obj: Any, key: str, path: str, kind: type | tuple[type, ...]) -> Any:
    """``obj[key]``, which must exist and have type ``kind`` (bools are not ints)."""
    if not isinstance(obj, dict):
        raise WireFormatError(path or "body", "must be a JSON object")
    where = f"{path}.{key}" if path else key
    if key not in obj or obj[key] is None:
        raise WireFormatError(where, "is required")
    return check_type(obj[key], where, kind)


def check_type(value: Any, path: str, kind: type | tuple[type, ...]) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise WireFormatError(path, f"must be {_names(kinds)}, not a boolean")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kinds):
        raise WireFormatError(path, f"must be {_names(kinds)}, not {_json_type(value)}")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    table = {int: "an integer", float: "a number", str: "a string", list: "an array", dict: "an object", bool: "a boolean"}
    return " or ".join(table.get(k, k.__name__) for k in kinds)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def check_protocol(body: dict[str, Any]) -> int:
    """The message's ``protocol`` field (default 1); unknown versions are refused."""
    version = body.get("protocol", PROTOCOL_VERSION)
    version = check_type(version, "protocol", int)
    if version not in SUPPORTED_PROTOCOLS:
        raise WireFormatError("protocol", f"version {version} is not supported; this side speaks {list(SUPPORTED_PROTOCOLS)}")
    return version


# -- arrays -----------------------------------------------------------------------------------------


def encode_array(arr: np.ndarray, dtype: str = "float32") -> dict[str, Any]:
    """An array as a JSON object; ``dtype`` is the precision on the wire."""
    if dtype not in DTYPES:
        raise ConfigError(f"wire dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    data = np.ascontiguousarray(arr, dtype=DTYPES[dtype])
    return {"dtype": dtype, "shape": list(data.shape), "data": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(obj: Any, path: str, *, ndim: int, max_elements: int | None = None, finite: bool = True) -> np.ndarray:
    """A float32 array from its JSON object; checks dtype, shape, byte count and (optionally) finiteness."""
    if not isinstance(obj, dict):
        raise WireFormatError(path, f"must be an object with dtype, shape and data, not {_json_type(obj)}")
    dtype = require(obj, "dtype", path, str)
    if dtype not in DTYPES:
        raise WireFormatError(f"{path}.dtype", f"must be one of {sorted(DTYPES)}; got {dtype!r}")
    shape = require(obj, "shape", path, list)
    if len(shape) != ndim:
        raise WireFormatError(f"{path}.shape", f"must have {ndim} dimensions; got {len(shape)}")
    dims = [check_type(s, f"{path}.shape[{i}]", int) for i, s in enumerate(shape)]
    if any(s < 0 for s in dims):
        raise WireFormatError(f"{path}.shape", f"sizes must not be negative; got {dims}")
    if any(s > MAX_DIM for s in dims):
        raise WireFormatError(f"{path}.shape", f"sizes must be at most {MAX_DIM}; got {dims}")
    count = math.prod(dims)
    if max_elements is not None and count > max_elements:
        raise WireFormatError(f"{path}.shape", f"holds {count} values; the limit is {max_elements}")
    text = require(obj, "data", path, str)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WireFormatError(f"{path}.data", "is not valid base64") from None
    want = count * DTYPES[dtype].itemsize
    if len(raw) != want:
        raise WireFormatError(f"{path}.data", f"holds {len(raw)} bytes; shape {dims} in {dtype} needs {want}")
    arr = np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(dims).astype(np.float32)
    if finite and not np.isfinite(arr).all():
        raise WireFormatError(f"{path}.data", "contains NaN or infinite values")
    return arr


# -- batches ----------------------------------------------------------------------------------------


def _text(value: str, path: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``), which are not text: refuse them here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise WireFormatError(path, "is not valid Unicode text (it holds a lone surrogate)") from None
    return value


def encode_batch(batch: ScoringBatch) -> dict[str, Any]:
    return {"queries": [{"prefix": q.prefix, "suffix": q.suffix} for q in batch.queries],
            "label_words": list(batch.label_words)}


def decode_batch(obj: Any, path: str = "batch", *, max_queries: int, max_label_words: int) -> ScoringBatch:
    if not isinstance(obj, dict):
        raise WireFormatError(path, f"must be an object with queries and label_words, not {_json_type(obj)}")
    queries = require(obj, "queries", path, list)
    if not 1 <= len(queries) <= max_queries:
        raise WireFormatError(f"{path}.queries", f"must hold 1 to {max_queries} queries; got {len(queries)}")
    out = []
    for i, q in enumerate(queries):
        where = f"{path}.queries[{i}]"
        prefix = _text(require(q, "prefix", where, str), f"{where}.prefix")
        suffix = _text(check_type(q.get("suffix", ""), f"{where}.suffix", str), f"{where}.suffix")
        out.append(Query(prefix, suffix))
    words = require(obj, "label_words", path, list)
    if not 1 <= len(words) <= max_label_words:
        raise WireFormatError(f"{path}.label_words", f"must hold 1 to {max_label_words} words; got {len(words)}")
    for i, w in enumerate(words):
        if not _text(check_type(w, f"{path}.label_words[{i}]", str), f"{path}.label_words[{i}]").strip():
            raise WireFormatError(f"{path}.label_words[{i}]", "must not be empty")
    return ScoringBatch(tuple(out), tuple(words))


# -- projection specs --------------------------------------------------------------------------------


def encode_spec(spec: ProjectionSpec | DeepProjectionSpec) -> dict[str, Any]:
    """A spec on the wire; a deep one carries ``"kind": "deep"`` and one scale per layer slot."""
    return spec.to_dict()


def decode_spec(obj: Any, path: str = "projection") -> ProjectionSpec | DeepProjectionSpec:
    """A plain projection spec, or a deep one (``"kind": "deep"``, ``"scales"`` instead of ``"scale"``)."""
    kind = check_type(obj.get("kind", "plain"), f"{path}.kind", str) if isinstance(obj, dict) else "plain"
    if kind == "deep":
        return _decode_deep_spec(obj, path)
    if kind != "plain":
        raise WireFormatError(f"{path}.kind", f"must be plain or deep; got {kind!r}")
    seed = require(obj, "seed", path, int)
    if not 0 <= seed < 2**128:
        raise WireFormatError(f"{path}.seed", "must be a non-negative integer below 2**128")
    sizes, dist = _sizes_and_distribution(obj, path)
    scale = require(obj, "scale", path, float)
    if not (math.isfinite(scale) and scale > 0):
        raise WireFormatError(f"{path}.scale", f"must be a positive finite number; got {scale}")
    return ProjectionSpec(seed, sizes["prompt_length"], sizes["hidden_size"], sizes["intrinsic_dim"],
                          DISTRIBUTIONS.canonical(dist), scale)


def _sizes_and_distribution(obj: dict[str, Any], path: str) -> tuple[dict[str, int], str]:
    """The sizes (L, D, d) and the distribution name every projection spec carries."""
    sizes = {k: require(obj, k, path, int) for k in ("prompt_length", "hidden_size", "intrinsic_dim")}
    for k, v in sizes.items():
        if v < 1:
            raise WireFormatError(f"{path}.{k}", f"must be at least 1; got {v}")
    dist = require(obj, "distribution", path, str)
    if dist not in DISTRIBUTIONS:
        raise WireFormatError(f"{path}.distribution", f"must be one of {list(DISTRIBUTIONS)}; got {dist!r}")
    return sizes, dist


def _decode_deep_spec(obj: dict[str, Any], path: str) -> DeepProjectionSpec:
    seed = require(obj, "seed", path, int)
    if not 0 <= seed < LAYER_SEED_STRIDE:
        raise WireFormatError(f"{path}.seed", "must be a non-negative integer below 2**64 for a deep projection")
    sizes, dist = _sizes_and_distribution(obj, path)
    raw = require(obj, "scales", path, list)
    if not 1 <= len(raw) <= 4096:
        raise WireFormatError(f"{path}.scales", f"must hold 1 to 4096 scales; got {len(raw)}")
    scales = tuple(check_type(x, f"{path}.scales[{i}]", float) for i, x in enumerate(raw))
    for i, x in enumerate(scales):
        if not (math.isfinite(x) and x > 0):
            raise WireFormatError(f"{path}.scales[{i}]", f"must be a positive finite number; got {x}")
    return DeepProjectionSpec(seed, sizes["prompt_length"], sizes["hidden_size"], sizes["intrinsic_dim"],
                              DISTRIBUTIONS.canonical(dist), scales)


# -- the service description -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may carry, and how much work the service queues before refusing more."""

    max_body_bytes: int
    max_prompts_per_request: int
    max_queries_per_batch: int
    max_label_words: int
    max_projection_bytes: int
    max_queue_prompts: int


@dataclass(frozen=True)
class ServiceInfo:
    """``GET /v1/info``: the model, the limits and what the service can do."""

    model: BackendInfo
    limits: ServiceLimits
    upload_modes: tuple[str, ...] = UPLOAD_MODES
    dtypes: tuple[str, ...] = tuple(DTYPES)
    server_version: str = ""
    protocol: int = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        m = self.model
        return {
            "protocol": self.protocol,
            "model": {"model_id": m.model_id, "kind": m.kind.value, "hidden_size": m.hidden_size,
                      "num_layers": m.num_layers, "embedding_std": m.embedding_std, "max_length": m.max_length,
                      "dtype": m.dtype, "device": m.device},
            "limits": asdict(self.limits),
            "capabilities": {"upload_modes": list(self.upload_modes), "dtypes": list(self.dtypes),
                             "batch_registration": True, "deep_prompts": m.supports_deep_prompts},
            "server_version": self.server_version,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> "ServiceInfo":
        protocol = require(obj, "protocol", "", int)
        if protocol not in SUPPORTED_PROTOCOLS:
            raise WireFormatError("protocol", f"the service speaks protocol {protocol}; this client speaks {list(SUPPORTED_PROTOCOLS)}")
        m = require(obj, "model", "", dict)
        kind = require(m, "kind", "model", str)
        if kind not in {k.value for k in ModelKind}:
            raise WireFormatError("model.kind", f"unknown model kind {kind!r}")
        caps = require(obj, "capabilities", "", dict)
        modes = tuple(check_type(x, "capabilities.upload_modes[]", str) for x in require(caps, "upload_modes", "capabilities", list))
        model = BackendInfo(
            model_id=require(m, "model_id", "model", str), kind=ModelKind(kind),
            hidden_size=require(m, "hidden_size", "model", int), num_layers=require(m, "num_layers", "model", int),
            embedding_std=require(m, "embedding_std", "model", float), max_length=require(m, "max_length", "model", int),
            dtype=require(m, "dtype", "model", str), device=require(m, "device", "model", str),
            supports_projection="projection" in modes,
            supports_deep_prompts=check_type(caps.get("deep_prompts", False), "capabilities.deep_prompts", bool),
        )
        lim = require(obj, "limits", "", dict)
        limits = ServiceLimits(**{f: require(lim, f, "limits", int) for f in ServiceLimits.__dataclass_fields__})
        dtypes = tuple(check_type(x, "capabilities.dtypes[]", str) for x in require(caps, "dtypes", "capabilities", list))
        return cls(model, limits, modes, dtypes, str(obj.get("server_version", "")), protocol)
