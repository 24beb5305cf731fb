"""A backend that scores soft prompts on vLLM servers (OpenAI-compatible ``/v1/completions``).

vLLM started with ``--enable-prompt-embeds`` takes whole inputs as embeddings (``prompt_embeds``:
a base64 ``torch.save`` of a ``[tokens, hidden]`` tensor per prompt) and, with
``logprob_token_ids``, returns the log-probabilities of exactly the tokens a client names. So the
client builds each (candidate, query) input itself (:mod:`.embedder`: leading special token, soft
prompt, template text), asks for one generated token with the label words' tokens, and reads
their log-probabilities back. Log-probabilities differ from logits by one constant per row, so
cross-entropy, hinge and accuracy are the same as on logits; the scores this backend returns are
those log-probabilities.

A population's rows travel in as few requests as the limits allow (:class:`RequestLimits`: rows
per request, bytes per request), sent together. Endpoints, rate limits, retries (tenacity,
Retry-After; 429, 5xx, timeouts, dropped connections, malformed answers) and the traffic meter are
:mod:`lmaas_tune.backends.http`'s, as for the lmaas-tune remote backend. Scoring is idempotent,
so a retried request is safe; a candidate is charged once its scores are back.

On connecting, each endpoint is checked once (:meth:`VllmBackend.connect`): the served model (from
``/v1/models`` or ``served_model``), the tokenizer (``/tokenize`` must give the client's token
ids), and a one-row probe that fails with a clear message when prompt embeddings are off, the
hidden size differs, the vocabulary is smaller, or ``logprob_token_ids`` is not supported.
Shallow prompts only: a vLLM server exposes no hidden states to add per-layer prompts to.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from lmaas_tune.errors import (
    AuthenticationError, BadResponseError, ConfigError, IncompatibleServiceError, RejectedError, RemoteError,
)
from lmaas_tune.backends.base import BackendInfo, ModelKind, ScoringBatch, check_prompts
from lmaas_tune.backends.http.backend import HttpBackend
from lmaas_tune.backends.http import (
    Endpoint, EndpointGate, EndpointLimits, EndpointPool, RetryConfig, Timeouts, exchange,
)
from lmaas_tune.backends.http.ratelimit import Sleep
from lmaas_tune.backends.local.encoding import EncodedBatch
from .embedder import ClientModel

log = logging.getLogger("lmaas_tune")

#: a text whose token ids the server's tokenizer must give exactly as the client's does
_PROBE_TEXT = "Review: the film was great , 42 % better than its 1999 original ! It was"
NO_DEEP_PROMPTS = "a vLLM server exposes no hidden states to add per-layer prompts to"


@dataclass(frozen=True)
class RequestLimits:
    """How much one ``/v1/completions`` request may carry.

    ``max_prompts``: vLLM refuses more (its ``VLLM_MAX_COMPLETION_PROMPTS``, 1024 by default);
    ``max_bytes``: the body size, which bounds the server's decoding work and memory per request.
    """

    max_prompts: int = 1024
    max_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.max_prompts < 1 or self.max_bytes < 1:
            raise ConfigError(f"request limits must be positive; got {self.max_prompts} prompts, {self.max_bytes} bytes")


class _Server(Endpoint):
    """One vLLM server: the name it serves the model under and its context length."""

    def __init__(self, url: str, gate: EndpointGate) -> None:
        super().__init__(url, gate)
        self.served = ""
        self.max_model_len = 0


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def encode_embeds(rows: np.ndarray) -> str:
    """One prompt's embeddings as vLLM reads them: base64 of ``torch.save`` of a 2-D tensor."""
    import torch

    buf = io.BytesIO()
    torch.save(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class VllmBackend(HttpBackend):
    """Scores prompts on vLLM servers; see the module docstring.

    ``model`` is what the client embeds with (the embedded name, a directory, a ``.gguf`` file or
    a hub id: the same model the servers loaded); ``served_model`` the name the servers know it by
    (default: the one model ``/v1/models`` lists). Construct, then ``await backend.connect()`` (or
    ``async with``), or use the blocking :meth:`open`.
    """

    label = "the vLLM backend"

    def __init__(
        self,
        endpoints: Sequence[str],
        model: str,
        *,
        served_model: str | None = None,
        token: str | None = None,
        limits: EndpointLimits = EndpointLimits(),
        retry: RetryConfig = RetryConfig(),
        timeouts: Timeouts = Timeouts(),
        requests: RequestLimits = RequestLimits(),
        dtype: str = "auto",
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._pool = EndpointPool(endpoints, _Server, server="`vllm serve ... --enable-prompt-embeds`", token=token,
                                  limits=limits, retry=retry, timeouts=timeouts, sleep=sleep)
        self._model_spec, self._served, self._requests, self._dtype = model, served_model, requests, dtype
        self._has_token = bool(token)
        self._model: ClientModel | None = None
        self._info: BackendInfo | None = None
        self._encoded: dict[str, EncodedBatch] = {}

    # -- connecting ---------------------------------------------------------------------------

    @property
    def client_model(self) -> ClientModel:
        self.info  # noqa: B018 - raises when not connected
        assert self._model is not None
        return self._model

    async def _connect(self, session: aiohttp.ClientSession) -> None:
        if self._model is None:
            self._model = await asyncio.to_thread(ClientModel.load, self._model_spec)
        model = self._model
        for ep in self._pool.endpoints:
            # a server that cannot be reached at all when we start is most likely a wrong URL: retry once, not for minutes
            await self._pool.call("checking the vLLM server", lambda e: self._check(session, e, model), pinned=ep,
                                  attempts=min(2, self._pool.retry.max_attempts))
        self._info = BackendInfo(
            model_id=model.name, kind=ModelKind.CAUSAL, hidden_size=model.hidden_size, num_layers=model.num_layers,
            embedding_std=model.embedding_std, max_length=min(e.max_model_len for e in self._pool.endpoints),
            device="vllm", dtype=self._dtype, max_concurrency=self._pool.max_in_flight, max_prompts_per_call=None,
            extra={"endpoints": " ".join(self.endpoints), "served_model": self._pool.endpoints[0].served,
                   "no_deep_prompts": NO_DEEP_PROMPTS},
        )

    async def _check(self, session: aiohttp.ClientSession, ep: _Server, model: ClientModel) -> None:

        try:
            listed = await exchange(session, "GET", ep.url + "/v1/models", server=self._pool.server)
        except AuthenticationError as exc:
            raise _key_refusal(exc, ep.url, self._has_token) from None
        models = listed.get("data")
        if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
            raise BadResponseError(f"GET {ep.url}/v1/models: no list of models in the answer", endpoint=ep.url)
        names = [m["id"] for m in models]
        if self._served is None and len(names) != 1:
            raise ConfigError(f"{ep.url} serves {len(names)} models {names}; name one with --served-model")
        ep.served = self._served or names[0]
        if ep.served not in names:
            raise ConfigError(f"{ep.url} does not serve {ep.served!r} (it serves {names}); fix --served-model")
        length = next(m.get("max_model_len") for m in models if m["id"] == ep.served)
        ep.max_model_len = int(length) if isinstance(length, int) and length > 0 else 1_000_000

        try:
            said = await exchange(session, "POST", ep.url + "/tokenize", _dumps(
                {"model": ep.served, "prompt": _PROBE_TEXT, "add_special_tokens": False}), server=self._pool.server)
        except RejectedError as exc:
            if exc.status_code != 404:
                raise
            log.warning("%s has no /tokenize; its tokenizer is not compared with the client's", ep.url)
        else:
            mine = list(model.tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"])
            if said.get("tokens") != mine:
                raise IncompatibleServiceError(
                    f"{ep.url} tokenizes text differently from {model.name} ({model.directory}): the server loaded "
                    f"another model or tokenizer; give --model the directory the server was started on",
                    endpoint=ep.url)

        probe = model.table[list(model.tokenizer("It was", add_special_tokens=False)["input_ids"])]
        last = model.vocab_size - 1
        try:
            answer = await exchange(session, "POST", ep.url + "/v1/completions", self._body(
                ep, [encode_embeds(probe)], (0, last)), server=self._pool.server)
        except RejectedError as exc:
            raise _refusal(exc, ep.url, model) from None
        try:
            _read_choices(answer, 1, (0, last), ep.url)
        except BadResponseError:  # an older vLLM ignores the field and answers with its top token only
            raise IncompatibleServiceError(
                f"{ep.url} ignored `logprob_token_ids` (it did not return the log-probabilities of the token ids "
                f"it was asked for); the vLLM backend needs vLLM 0.32 or newer: upgrade vLLM on the server",
                endpoint=ep.url) from None

    def _body(self, ep: _Server, embeds: list[str], label_ids: tuple[int, ...]) -> bytes:
        return _dumps({"model": ep.served, "prompt_embeds": embeds, "max_tokens": 1, "temperature": 0.0,
                       "logprobs": 1, "logprob_token_ids": list(label_ids), "return_tokens_as_token_ids": True})

    # -- scoring ------------------------------------------------------------------------------------

    def _encode(self, batch: ScoringBatch) -> EncodedBatch:
        enc = self._encoded.get(batch.key)
        if enc is None:
            enc = self.client_model.encode(batch)
            self._encoded[batch.key] = enc
            while len(self._encoded) > 8:
                self._encoded.pop(next(iter(self._encoded)))
        return enc

    async def token_lengths(self, batch: ScoringBatch) -> tuple[int, ...]:
        return tuple(int(x) for x in self._encode(batch).lengths)

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        arr = check_prompts(prompts, self.info)  # refuses deep prompts: supports_deep_prompts is False
        if arr is not None and arr.shape[-2] == 0:
            arr = None
        enc = self._encode(batch)
        cands = 1 if arr is None else len(arr)
        embeds, sizes = await asyncio.to_thread(self._serialise, enc, arr)
        groups = self._groups(sizes)
        lengths = enc.lengths + (0 if arr is None else arr.shape[1])
        n = len(enc.ids)

        async def send(lo: int, hi: int) -> np.ndarray:
            payload_rows = embeds[lo:hi]
            tokens = int(sum(lengths[r % n] for r in range(lo, hi)))

            async def once(ep: _Server) -> np.ndarray:
                body = self._body(ep, payload_rows, enc.label_ids)
                answer = await self._pool.send(ep, "POST", "/v1/completions", body, tokens)
                return _read_choices(answer, hi - lo, enc.label_ids, ep.url)

            return await self._pool.call("scoring", once)

        if len(groups) == 1:
            flat = await send(*groups[0])
        else:
            async with asyncio.TaskGroup() as tasks:
                parts = [tasks.create_task(send(lo, hi)) for lo, hi in groups]
            flat = np.concatenate([p.result() for p in parts], axis=0)
        return flat.reshape(cands, n, len(enc.label_ids))

    def _serialise(self, enc: EncodedBatch, prompts: np.ndarray | None) -> tuple[list[str], list[int]]:
        model = self.client_model
        embeds: list[str] = []
        for prompt in [None] if prompts is None else prompts:
            embeds.extend(encode_embeds(r) for r in model.rows(enc, prompt))
        return embeds, [len(e) + 3 for e in embeds]  # the quotes and comma around each in the JSON list

    def _groups(self, sizes: list[int]) -> list[tuple[int, int]]:
        """Consecutive row ranges, each within the request limits (a row over the byte limit goes alone)."""
        limit, room = self._requests, self._requests.max_bytes - 1024  # the rest of the body
        out: list[tuple[int, int]] = []
        lo, used = 0, 0
        for i, size in enumerate(sizes):
            if i > lo and (i - lo >= limit.max_prompts or used + size > room):
                out.append((lo, i))
                lo, used = i, 0
            used += size
        out.append((lo, len(sizes)))
        return out

    async def embed_text(self, text: str) -> np.ndarray:
        """Rows of the client's input embedding table (the same table the server holds)."""
        return self.client_model.embed_text(text)

    async def hidden_state_std(self, batch: ScoringBatch) -> tuple[float, ...]:
        raise ConfigError(f"deep prompts need hidden states, and {NO_DEEP_PROMPTS}; use --method bbt with --backend vllm")



def _key_refusal(exc: AuthenticationError, url: str, has_token: bool) -> AuthenticationError:
    """A 401/403 on connecting, as the fix: send the key, or send the right one."""
    status = f"HTTP {exc.status_code}" if exc.status_code else "refused"
    if has_token:
        text = (f"{url} refused the API key ({status}); check --token-env: its variable must hold the key the "
                f"server was started with (`vllm serve --api-key`, or VLLM_API_KEY)")
    else:
        text = (f"{url} requires an API key ({status}) and none was sent; pass --token-env VAR, with VAR holding "
                f"the key the server was started with (`vllm serve --api-key`, or VLLM_API_KEY)")
    return AuthenticationError(text, status_code=exc.status_code, endpoint=url, code=exc.code, field=exc.field)


def _refusal(exc: RejectedError, url: str, model: ClientModel) -> RemoteError:
    """A probe's 400 as the fix it calls for; other refusals pass unchanged.

    vLLM 0.32 says (``renderers/embed_utils.py``, ``sampling_params.py``): "You must set
    `--enable-prompt-embeds` to input `prompt_embeds`."; "`prompt_embeds` hidden_size 64 does not
    match the model's hidden_size 576."; "token_id(s) [49215] in logprob_token_ids contain
    out-of-vocab token ids. Vocabulary size: 49152"."""
    text = str(exc)
    fix = "give --model the directory the server was started on"
    mine = f"{model.name} ({model.directory})"
    if "enable-prompt-embeds" in text or "enable_prompt_embeds" in text:
        return IncompatibleServiceError(
            f"{url} was started without prompt embeddings; restart it with `vllm serve MODEL --enable-prompt-embeds`",
            endpoint=url)
    if "hidden_size" in text:
        theirs = re.search(r"model's hidden_size (\d+)", text)
        return IncompatibleServiceError(
            f"{url} serves a model of hidden size {theirs.group(1) if theirs else 'other than ' + str(model.hidden_size)}"
            f", but {mine} has hidden size {model.hidden_size}; {fix}", endpoint=url)
    if "out-of-vocab" in text or ("vocab" in text.lower() and "token" in text.lower()):
        theirs = re.search(r"[Vv]ocabulary size:? (\d+)", text)
        return IncompatibleServiceError(
            f"{url} serves a model with a vocabulary of {theirs.group(1) if theirs else 'fewer'} tokens, but {mine} "
            f"has {model.vocab_size}; {fix}", endpoint=url)
    if exc.field == "logprob_token_ids":
        return IncompatibleServiceError(
            f"{url} refused `logprob_token_ids` ({text}); the vLLM backend needs vLLM 0.32 or newer", endpoint=url)
    return exc


def _read_choices(answer: dict[str, Any], rows: int, label_ids: tuple[int, ...], url: str) -> np.ndarray:
    """``[rows, labels]`` log-probabilities from a completions answer, in prompt order."""
    def bad(reason: str) -> BadResponseError:
        return BadResponseError(f"POST {url}/v1/completions: malformed answer: {reason}", status_code=200, endpoint=url)

    choices = answer.get("choices")
    if not isinstance(choices, list) or len(choices) != rows:
        raise bad(f"expected {rows} choices, got {len(choices) if isinstance(choices, list) else 'none'}")
    out = np.empty((rows, len(label_ids)), dtype=np.float32)
    seen = set()
    keys = [f"token_id:{t}" for t in label_ids]
    for choice in choices:
        index = choice.get("index") if isinstance(choice, dict) else None
        if not isinstance(index, int) or not 0 <= index < rows or index in seen:
            raise bad("choice indices are not 0..n-1")
        seen.add(index)
        try:
            top = choice["logprobs"]["top_logprobs"][0]
            out[index] = [float(top[k]) for k in keys]
        except (KeyError, IndexError, TypeError, ValueError):
            raise bad(f"choice {index} lacks the log-probabilities of tokens {list(label_ids)}") from None
    return out
