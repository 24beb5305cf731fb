"""The scoring service over real HTTP on 127.0.0.1: routes, upload modes, auth, limits, overload, shutdown."""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

import aiohttp
import numpy as np
import pytest
from remote_support import CAUSAL_BATCH, GatedBackend, post_json, prompts, served, wait_until

from lmaas_tune.backends.base import Query, ScoringBatch
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.wire import encode_array, encode_batch, encode_spec
from lmaas_tune.errors import ConfigError
from lmaas_tune.projection import Projection, ProjectionSpec
from lmaas_tune.server import ServerConfig, is_loopback, resolve_token

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def test_health_and_info_describe_the_model(llama_backend: LocalBackend) -> None:
    async with served(llama_backend, max_prompts_per_request=7) as server, aiohttp.ClientSession() as s:
        async with s.get(server.url + "/v1/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(server.url + "/v1/info") as r:
            info = await r.json()
    m, local = info["model"], llama_backend.info
    assert info["protocol"] == 1
    assert (m["model_id"], m["kind"], m["hidden_size"], m["max_length"]) == (local.model_id, "causal", local.hidden_size, local.max_length)
    assert m["embedding_std"] == local.embedding_std  # exact: the projection scale is built from it
    assert info["limits"]["max_prompts_per_request"] == 7
    assert set(info["capabilities"]["upload_modes"]) == {"embeddings", "projection"}
    assert info["capabilities"]["dtypes"] == ["float32", "float16"]


async def test_both_upload_modes_and_the_manual_template_score_what_the_backend_scores(llama_backend: LocalBackend) -> None:
    batch, hidden = CAUSAL_BATCH, llama_backend.info.hidden_size
    spec = ProjectionSpec(seed=5, prompt_length=3, hidden_size=hidden, intrinsic_dim=6, scale=0.05)
    z = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    emb = prompts(4, 3, hidden)
    async with served(llama_backend) as server, aiohttp.ClientSession() as s:
        async with s.put(f"{server.url}/v1/batches/{batch.key}", json={"protocol": 1, "batch": encode_batch(batch)}) as r:
            reg = await r.json()
        assert r.status == 200 and reg["batch_key"] == batch.key
        assert tuple(reg["token_lengths"]) == await llama_backend.token_lengths(batch)
        async with s.get(f"{server.url}/v1/batches/{batch.key}") as r:
            assert r.status == 200
        base = {"protocol": 1, "batch_key": batch.key}
        answers = {}
        for name, extra in [("emb", {"prompts": encode_array(emb)}), ("z", {"z": encode_array(z), "projection": encode_spec(spec)}),
                            ("manual", {"prompts": None}), ("inline", {"batch_key": None, "batch": encode_batch(batch), "prompts": encode_array(emb)})]:
            status, _, body = await post_json(s, server.url + "/v1/score", {**base, **extra})
            assert status == 200, body
            raw = base64.b64decode(body["logits"]["data"])
            answers[name] = np.frombuffer(raw, "<f4").reshape(body["logits"]["shape"])
            assert body["batch_key"] == batch.key and body["usage"]["examples"] == 3
    np.testing.assert_allclose(answers["emb"], await llama_backend.score(emb, batch), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(answers["z"], await llama_backend.score(Projection(spec)(z), batch), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(answers["manual"], await llama_backend.score(None, batch), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(answers["inline"], answers["emb"])


# -- auth -------------------------------------------------------------------------------------------


async def test_bearer_token_is_required_and_compared(llama_backend: LocalBackend) -> None:
    async with served(llama_backend, token="s3cret") as server, aiohttp.ClientSession() as s:
        async with s.get(server.url + "/v1/health") as r:
            assert r.status == 200  # liveness stays open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer "}):
            async with s.get(server.url + "/v1/info", headers=headers) as r:
                body = await r.json()
                assert r.status == 401, headers
                assert body["error"]["code"] == "unauthorized" and body["error"]["field"] == "Authorization"
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        status, _, _ = await post_json(s, server.url + "/v1/score", {}, headers={"Authorization": "Bearer nope"})
        assert status == 401  # before the body is looked at
        async with s.get(server.url + "/v1/info", headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200


def test_token_required_off_loopback_and_read_from_file_or_env(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(ConfigError, match="needs a bearer token"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", token="t").token == "t"
    assert "hunter2" not in repr(ServerConfig(host="0.0.0.0", token="hunter2"))  # never logged
    (tmp_path / "tok").write_text("from-file\nignored\n")
    assert resolve_token(tmp_path / "tok") == "from-file"
    monkeypatch.setenv("MY_TOKEN", "from-env")
    assert resolve_token(token_env="MY_TOKEN") == "from-env"
    with pytest.raises(ConfigError, match="not set"):
        resolve_token(token_env="NOT_THERE_123")
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_token(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_token(tmp_path / "empty")


# -- request size and malformed requests --------------------------------------------------------------


async def test_oversize_body_is_413_with_a_json_body(llama_backend: LocalBackend) -> None:
    async with served(llama_backend, max_body_bytes=4096) as server, aiohttp.ClientSession() as s:
        big = {"protocol": 1, "batch_key": CAUSAL_BATCH.key, "prompts": encode_array(prompts(8, 4, 32))}
        status, _, body = await post_json(s, server.url + "/v1/score", big)
        assert status == 413 and body["error"]["code"] == "body_too_large" and body["error"]["field"] == "body"

        async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b" " * 1000

        async with s.post(server.url + "/v1/score", data=chunks()) as r:
            assert r.status == 413 and (await r.json())["error"]["field"] == "body"


def _score_body(hidden: int) -> dict[str, Any]:
    return {"protocol": 1, "batch_key": CAUSAL_BATCH.key, "prompts": encode_array(prompts(2, 3, hidden))}


def _z_body(hidden: int) -> dict[str, Any]:
    spec = ProjectionSpec(seed=1, prompt_length=2, hidden_size=hidden, intrinsic_dim=4, scale=0.1)
    return {"protocol": 1, "batch_key": CAUSAL_BATCH.key, "z": encode_array(np.zeros((2, 4))), "projection": encode_spec(spec)}


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return out


_DELETE = object()
_NAN = base64.b64encode(np.full(2 * 3 * 32, np.nan, "<f4").tobytes()).decode()

# (what, body builder, status, field)
SCORE_CASES = [
    ("protocol 99", lambda h: _set(_score_body(h), "protocol", 99), 400, "protocol"),
    ("protocol as a string", lambda h: _set(_score_body(h), "protocol", "1"), 400, "protocol"),
    ("no batch", lambda h: _set(_score_body(h), "batch_key", _DELETE), 422, "batch_key"),
    ("key not a hash", lambda h: _set(_score_body(h), "batch_key", "abc"), 422, "batch_key"),
    ("key and batch", lambda h: _set(_score_body(h), "batch", encode_batch(CAUSAL_BATCH)), 422, "batch"),
    ("unknown key", lambda h: _set(_score_body(h), "batch_key", "0" * 64), 404, "batch_key"),
    ("prompts a list", lambda h: _set(_score_body(h), "prompts", [[1.0]]), 422, "prompts"),
    ("bad dtype", lambda h: _set(_score_body(h), "prompts.dtype", "int8"), 422, "prompts.dtype"),
    ("no dtype", lambda h: _set(_score_body(h), "prompts.dtype", _DELETE), 422, "prompts.dtype"),
    ("2-d prompts", lambda h: _set(_score_body(h), "prompts.shape", [2, 3 * h]), 422, "prompts.shape"),
    ("shape of strings", lambda h: _set(_score_body(h), "prompts.shape", [2, "3", h]), 422, "prompts.shape[1]"),
    ("wrong hidden size", lambda h: _set(_score_body(h), "prompts.shape", [2, 6, h // 2]), 422, "prompts.shape"),
    ("not base64", lambda h: _set(_score_body(h), "prompts.data", "@@@"), 422, "prompts.data"),
    ("short data", lambda h: _set(_score_body(h), "prompts.data", "AAAA"), 422, "prompts.data"),
    ("NaN prompts", lambda h: _set(_score_body(h), "prompts.data", _NAN), 422, "prompts.data"),
    ("too many prompts", lambda h: _set(_score_body(h), "prompts", encode_array(prompts(9, 1, h))), 422, "prompts.shape"),
    ("prompt too long", lambda h: _set(_score_body(h), "prompts", encode_array(prompts(1, 126, h))), 422, "prompts.shape"),
    ("prompts and z", lambda h: {**_score_body(h), "z": _z_body(h)["z"]}, 422, "z"),
    ("z without spec", lambda h: _set(_z_body(h), "projection", _DELETE), 422, "projection"),
    ("negative seed", lambda h: _set(_z_body(h), "projection.seed", -1), 422, "projection.seed"),
    ("seed a bool", lambda h: _set(_z_body(h), "projection.seed", True), 422, "projection.seed"),
    ("unknown distribution", lambda h: _set(_z_body(h), "projection.distribution", "cauchy"), 422, "projection.distribution"),
    ("scale a string", lambda h: _set(_z_body(h), "projection.scale", "big"), 422, "projection.scale"),
    ("scale zero", lambda h: _set(_z_body(h), "projection.scale", 0), 422, "projection.scale"),
    ("spec hidden size", lambda h: _set(_z_body(h), "projection.hidden_size", h + 1), 422, "projection.hidden_size"),
    ("spec too large", lambda h: _set(_z_body(h), "projection.intrinsic_dim", 10**6), 422, "projection"),
    ("z dimension", lambda h: _set(_z_body(h), "z", encode_array(np.zeros((2, 5)))), 422, "z.shape"),
    ("z 3-d", lambda h: _set(_z_body(h), "z", encode_array(np.zeros((2, 4, 1)))), 422, "z.shape"),
]

BATCH_CASES = [
    ("batch missing", lambda b: {"protocol": 1}, 422, "batch"),
    ("no queries", lambda b: _set(b, "batch.queries", []), 422, "batch.queries"),
    ("query not an object", lambda b: _set(b, "batch.queries", ["text"]), 422, "batch.queries[0]"),
    ("prefix a number", lambda b: _set(b, "batch.queries", [{"prefix": 3}]), 422, "batch.queries[0].prefix"),
    ("suffix on a causal LM", lambda b: _set(b, "batch.queries", [{"prefix": "a", "suffix": "b"}]), 422, "batch.queries[0].suffix"),
    ("empty label word", lambda b: _set(b, "batch.label_words", ["bad", " "]), 422, "batch.label_words[1]"),
    ("colliding label words", lambda b: _set(b, "batch.label_words", ["great", "great"]), 422, "batch.label_words"),
    ("content hash mismatch", lambda b: _set(b, "batch.label_words", ["good", "great"]), 422, "batch_key"),
]


def _key_of(body: dict[str, Any]) -> str:
    try:
        b = body["batch"]
        return ScoringBatch(tuple(Query(q["prefix"], q.get("suffix", "")) for q in b["queries"]), tuple(b["label_words"])).key
    except (KeyError, TypeError):
        return CAUSAL_BATCH.key


async def test_every_malformed_request_is_4xx_naming_the_field(llama_backend: LocalBackend) -> None:
    h = llama_backend.info.hidden_size
    async with served(llama_backend, max_prompts_per_request=8, max_projection_bytes=1 << 20) as server, \
            aiohttp.ClientSession() as s:
        url = server.url
        async with s.put(f"{url}/v1/batches/{CAUSAL_BATCH.key}", json={"batch": encode_batch(CAUSAL_BATCH)}) as r:
            assert r.status == 200
        seen = []
        for what, build, status, field in SCORE_CASES:
            code, _, body = await post_json(s, url + "/v1/score", build(h))
            seen.append((what, code, body["error"].get("field")))
            assert (code, body["error"]["field"]) == (status, field), (what, body)
            assert body["error"]["message"]
        reg = {"protocol": 1, "batch": encode_batch(CAUSAL_BATCH)}
        for what, build, status, field in BATCH_CASES:
            sent = build(copy.deepcopy(reg))
            key = CAUSAL_BATCH.key if field == "batch_key" else _key_of(sent)  # only the mismatch case lies
            async with s.put(f"{url}/v1/batches/{key}", json=sent) as r:
                body = await r.json()
            assert (r.status, body["error"]["field"]) == (status, field), (what, body)
        for raw, field in [(b"{not json", "body"), (b"[1, 2]", "body"), (b"\xff\xfe", "body")]:
            async with s.post(url + "/v1/score", data=raw) as r:
                body = await r.json()
            assert (r.status, body["error"]["field"]) == (400, field)
        async with s.put(f"{url}/v1/batches/xyz", json=reg) as r:
            assert r.status == 422 and (await r.json())["error"]["field"] == "batch_key"
        async with s.get(url + "/v2/nothing") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        async with s.delete(url + "/v1/score") as r:
            assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
    assert all(400 <= code < 500 for _, code, _ in seen)


# -- overload, shutdown, many clients ------------------------------------------------------------------


async def test_full_queue_answers_503_with_retry_after(llama_backend: LocalBackend) -> None:
    gated = GatedBackend(llama_backend)
    h = llama_backend.info.hidden_size
    async with served(gated, max_queue_prompts=2, max_prompts_per_request=2, retry_after_s=3) as server, \
            aiohttp.ClientSession() as s:
        body = {"protocol": 1, "batch": encode_batch(CAUSAL_BATCH), "prompts": encode_array(prompts(1, 2, h))}
        first = [asyncio.create_task(post_json(s, server.url + "/v1/score", body)) for _ in range(2)]
        await wait_until(lambda: server.service.batcher.load == 2, "two queued candidates")
        status, headers, answer = await post_json(s, server.url + "/v1/score", body)
        assert status == 503 and headers["Retry-After"] == "3"
        assert answer["error"]["code"] == "overloaded"
        gated.gate.set()
        assert [r[0] for r in await asyncio.gather(*first)] == [200, 200]
        status, _, _ = await post_json(s, server.url + "/v1/score", body)  # room again
        assert status == 200


async def test_graceful_shutdown_answers_requests_in_flight(llama_backend: LocalBackend) -> None:
    gated = GatedBackend(llama_backend)
    h = llama_backend.info.hidden_size
    body = {"protocol": 1, "batch": encode_batch(CAUSAL_BATCH), "prompts": encode_array(prompts(2, 2, h))}
    async with served(gated) as server, aiohttp.ClientSession() as s:
        url = server.url
        pending = asyncio.create_task(post_json(s, url + "/v1/score", body))
        await wait_until(lambda: server.service.batcher.load == 2, "the request to be queued")
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waiting for the request in flight
        gated.gate.set()
        status, _, answer = await pending
        assert status == 200 and answer["logits"]["shape"] == [2, 3, 2]
        await stopping
        assert server.service.batcher.load == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await post_json(s, url + "/v1/score", body)


async def test_two_hundred_concurrent_clients_see_no_5xx(llama_backend: LocalBackend) -> None:
    h = llama_backend.info.hidden_size
    rows = prompts(200, 2, h, seed=3)
    async with served(llama_backend) as server:
        async with aiohttp.ClientSession() as s:
            async with s.put(f"{server.url}/v1/batches/{CAUSAL_BATCH.key}", json={"batch": encode_batch(CAUSAL_BATCH)}) as r:
                assert r.status == 200

        async def client(i: int) -> tuple[int, Any]:
            async with aiohttp.ClientSession() as own:  # one client, one connection
                status, _, body = await post_json(own, server.url + "/v1/score",
                                                  {"batch_key": CAUSAL_BATCH.key, "prompts": encode_array(rows[i:i + 1])})
                return status, body

        answers = await asyncio.gather(*(client(i) for i in range(200)))
        batcher = server.service.batcher
    assert [status for status, _ in answers] == [200] * 200
    assert batcher.requests == 200 and batcher.passes < 200  # requests shared forward passes
    got = np.concatenate([np.frombuffer(base64.b64decode(b["logits"]["data"]), "<f4").reshape(b["logits"]["shape"])
                          for _, b in answers])
    np.testing.assert_allclose(got, await llama_backend.score(rows, CAUSAL_BATCH), atol=1e-5, rtol=1e-5)
