"""Property-based tests of the service's request decoding: never a 500, never a crash.

Requests are valid protocol messages mutated by hypothesis (any field replaced by any JSON value,
removed, or joined by junk; arrays with odd shapes, dtypes and bytes; NaN, huge numbers, lone
surrogates) plus raw bytes and pathological JSON. The decoders alone must raise nothing but
:class:`WireFormatError`; through a real service on 127.0.0.1 every answer must be a JSON 2xx or
4xx, and the service must still be healthy afterwards. Examples are derandomised so CI runs the
same ones every time.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from remote_support import CAUSAL_BATCH, ThreadedServer

from lmaas_tune.backends.base import ModelKind
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.wire import encode_array, encode_batch
from lmaas_tune.errors import WireFormatError
from lmaas_tune.server import ServerConfig
from lmaas_tune.server.decoding import decode_batch_for, decode_score
from lmaas_tune.server.problems import ApiError

HIDDEN = 32
LIMITS = dict(max_body_bytes=256 * 1024, max_prompts_per_request=8, max_queries_per_batch=16, max_label_words=8,
              max_projection_bytes=64 * 1024, max_queue_prompts=64)
FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _valid_bodies() -> list[dict[str, Any]]:
    batch = encode_batch(CAUSAL_BATCH)
    spec = {"seed": 3, "prompt_length": 2, "hidden_size": HIDDEN, "intrinsic_dim": 4, "distribution": "normal",
            "scale": 0.05}
    prompts = encode_array(np.full((2, 2, HIDDEN), 0.01, dtype=np.float32))
    return [
        {"protocol": 1, "batch": batch, "prompts": prompts},
        {"protocol": 1, "batch": batch, "z": encode_array(np.ones((2, 4), dtype=np.float32)), "projection": spec},
        {"protocol": 1, "batch_key": CAUSAL_BATCH.key, "prompts": prompts},
        {"protocol": 1, "batch": batch},
    ]


SURROGATE = "\ud800"
texts = st.one_of(st.text(max_size=20), st.sampled_from(["", " ", SURROGATE, "a" + SURROGATE, "\x00", "é" * 3,
                                                       "float16", "float32", "normal", "uniform", "NaN"]))
numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, 1, -1, 2**31, 2**63]),
                    st.floats(allow_nan=True, allow_infinity=True))
b64 = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
arrays = st.fixed_dictionaries({
    "dtype": st.sampled_from(["float32", "float16", "float64", "int8"]),
    "shape": st.lists(st.one_of(st.integers(0, 40), st.sampled_from([-1, 2**31, 10**30])), max_size=4),
    "data": st.one_of(b64, texts),
})
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts, arrays),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_bodies(draw: st.DrawFn) -> Any:
    body = copy.deepcopy(draw(st.sampled_from(_valid_bodies())))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(body) if p]
        if not paths:
            return draw(json_values)
        path = draw(st.sampled_from(paths))
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "junk"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "junk" and isinstance(parent, dict):
            parent[draw(texts)] = draw(json_values)
        else:
            parent[path[-1]] = draw(json_values)
    return body


# -- the decoders alone --------------------------------------------------------------------------


#: bodies that once got past the decoders (regressions, kept as explicit examples)
ZERO_SIZED_HUGE = {"protocol": 1, "batch": encode_batch(CAUSAL_BATCH),
                   "prompts": {"dtype": "float32", "shape": [0, 10**30, HIDDEN], "data": ""}}
LONE_SURROGATE = {"protocol": 1, "batch": {"queries": [{"prefix": "it was" + SURROGATE}], "label_words": ["bad", "great"]}}


@FUZZ
@given(body=st.one_of(mutated_bodies(), json_values))
@example(body=ZERO_SIZED_HUGE)
@example(body=LONE_SURROGATE)
def test_decoders_raise_nothing_but_wire_format_errors(llama_backend: LocalBackend, body: Any) -> None:
    config = ServerConfig(port=0, **LIMITS)
    info = llama_backend.info
    assert info.kind is ModelKind.CAUSAL and info.hidden_size == HIDDEN
    try:
        if isinstance(body, dict):
            decode_score(body, info, config)
        batch = decode_batch_for(body.get("batch") if isinstance(body, dict) else body, info, config)
        assert len(batch.key) == 64  # what the service does next with a batch
    except (WireFormatError, ApiError):
        pass


# -- through a real service ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(llama_backend: LocalBackend) -> Iterator[ThreadedServer]:
    with ThreadedServer(llama_backend, **LIMITS) as server:
        yield server


def _request(url: str, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8")


routes = st.one_of(
    st.just(("POST", "/v1/score")),
    st.tuples(st.sampled_from(["PUT", "GET"]),
              st.one_of(st.just(f"/v1/batches/{CAUSAL_BATCH.key}"), st.text("0123456789abcdef", min_size=1, max_size=70)
                        .map(lambda k: f"/v1/batches/{k}"))),
    st.tuples(st.sampled_from(["GET", "POST", "DELETE"]), st.sampled_from(["/v1/info", "/v1/nothing", "/", "/v1/score"])),
)
payloads = st.one_of(
    mutated_bodies().map(_encode),
    mutated_bodies().map(lambda b: _encode({"batch": b.get("batch") if isinstance(b, dict) else b})),
    json_values.map(_encode),
    st.binary(max_size=200),
    st.sampled_from([b"", b"[" * 50_000 + b"]" * 50_000, b'{"protocol": 1, "batch": ' * 3000, b"\xff\xfe",
                     b'{"protocol": NaN}', b'{"protocol": 1e999}', b"x" * (LIMITS["max_body_bytes"] + 10)]),
)


@FUZZ
@given(route=routes, payload=payloads)
@example(route=("POST", "/v1/score"), payload=b"[" * 50_000 + b"]" * 50_000)
@example(route=("POST", "/v1/score"), payload=_encode(ZERO_SIZED_HUGE))
@example(route=("PUT", f"/v1/batches/{CAUSAL_BATCH.key}"), payload=_encode(LONE_SURROGATE))
def test_the_service_never_answers_500(service: ThreadedServer, route: tuple[str, str], payload: bytes) -> None:
    method, path = route
    status, raw = _request(service.url, method, path, payload if method in ("POST", "PUT") else None)
    assert status < 500, (status, raw[:300], payload[:200])
    answer = json.loads(raw)
    assert isinstance(answer, dict)
    if status >= 400:
        assert set(answer["error"]) >= {"code", "message"}


def test_the_service_is_still_healthy_and_scores_after_the_fuzzing(service: ThreadedServer,
                                                                    llama_backend: LocalBackend) -> None:
    status, raw = _request(service.url, "GET", "/v1/health", None)
    assert status == 200 and json.loads(raw)["status"] == "ok"
    body = _valid_bodies()[0]
    status, raw = _request(service.url, "POST", "/v1/score", _encode(body))
    assert status == 200, raw[:300]
    assert json.loads(raw)["logits"]["shape"] == [2, len(CAUSAL_BATCH), 2]
