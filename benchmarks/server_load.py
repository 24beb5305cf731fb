"""A bounded load test of the scoring service on loopback: throughput and latency percentiles.

``--clients`` concurrent clients each send ``--requests`` score requests (``--prompts`` candidates
each, uploaded as z plus the projection spec, or as embeddings with ``--upload embeddings``) on
one keep-alive session, after registering the batch once. The service is started in a background
thread of this process (its own event loop; the model runs in its worker thread), or is an
existing one given with ``--url``. Reported: requests per second, candidates per second, p50 /
p99 / max latency, and the answers by HTTP status (a healthy service answers everything 200; a
full queue answers 503 with Retry-After, which a client would retry).

Backends: ``tiny`` (default) is a tiny random Llama built here (2 layers, hidden 32; a real
transformer, so batching and the worker thread are exercised at little CPU cost); ``instant``
is model-free (logits from the prompts' means: the HTTP/JSON/batching overhead alone); anything
else is a ``--model`` for the local backend (e.g. ``smollm2-135m``).

    python benchmarks/server_load.py [--backend tiny] [--clients 32] [--requests 20] [--prompts 4]
    python benchmarks/server_load.py --url http://127.0.0.1:8080 --token-env LMAAS_TUNE_TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import numpy as np
from instant_backend import InstantBackend

from lmaas_tune.backends.base import (
    Backend,
    Query,
    ScoringBatch,
)
from lmaas_tune.wire import encode_array, encode_batch
from lmaas_tune.server import RunningServer, ServerConfig

BATCH = ScoringBatch(tuple(Query(f"review number {i} : it was a {w} movie . It was")
                           for i, w in enumerate(["great", "bad", "good", "terrible"] * 4)), ("bad", "great"))


@dataclass(frozen=True)
class LoadReport:
    requests: int
    statuses: dict[int, int]
    wall_s: float
    requests_per_s: float
    candidates_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def line(self) -> str:
        codes = ", ".join(f"{n} x {s}" for s, n in sorted(self.statuses.items()))
        return (f"{self.requests} requests in {self.wall_s:.2f} s: {self.requests_per_s:.1f} req/s, "
                f"{self.candidates_per_s:.1f} candidates/s; latency p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
                f"max {self.max_ms:.1f} ms; answers: {codes}")


def _score_body(hidden: int, prompts: int, upload: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    body: dict[str, Any] = {"protocol": 1, "batch_key": BATCH.key}
    if upload == "projection":
        dim = 50
        body["z"] = encode_array(rng.standard_normal((prompts, dim)).astype(np.float32))
        body["projection"] = {"seed": 42, "prompt_length": 5, "hidden_size": hidden, "intrinsic_dim": dim,
                              "distribution": "normal", "scale": 0.01}
    else:
        body["prompts"] = encode_array(0.01 * rng.standard_normal((prompts, 5, hidden)).astype(np.float32))
    return json.dumps(body).encode()


async def run_load(url: str, *, clients: int = 32, requests: int = 20, prompts: int = 4, upload: str = "projection",
                   token: str | None = None) -> LoadReport:
    """Send ``clients * requests`` score requests, ``clients`` at a time; see the module docstring."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connector = aiohttp.TCPConnector(limit=clients + 1)
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        async with session.get(url + "/v1/info") as resp:
            resp.raise_for_status()
            hidden = int((await resp.json())["model"]["hidden_size"])
        async with session.put(f"{url}/v1/batches/{BATCH.key}",
                               data=json.dumps({"protocol": 1, "batch": encode_batch(BATCH)})) as resp:
            resp.raise_for_status()
        bodies = [_score_body(hidden, prompts, upload, seed) for seed in range(8)]
        latencies: list[float] = []
        statuses: Counter[int] = Counter()

        async def client(c: int) -> None:
            for r in range(requests):
                start = time.perf_counter()
                async with session.post(url + "/v1/score", data=bodies[(c + r) % len(bodies)]) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000.0
    ok = statuses.get(200, 0)
    return LoadReport(len(latencies), dict(statuses), wall, len(latencies) / wall, ok * prompts / wall,
                      float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max()))


# -- the service under load ---------------------------------------------------------------------------


def tiny_llama(directory: str) -> str:
    """Save a tiny random Llama (and a tokenizer trained on a few sentences) into ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([q.prefix + " bad great" for q in BATCH.queries] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, pad_token_id=1,
                      bos_token_id=0, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def open_backend(name: str, workdir: str) -> Backend:
    if name == "instant":
        return InstantBackend(max_concurrency=4)
    from lmaas_tune.backends.local.backend import LocalBackend

    model = tiny_llama(workdir) if name == "tiny" else name
    return LocalBackend.load(model, device="cpu", dtype="float32")


class BackgroundService:
    """``RunningServer`` for ``backend`` on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, backend: Backend, config: ServerConfig) -> None:
        self.backend, self.config, self.url = backend, config, ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        async with RunningServer(self.backend, self.config) as server:
            self.url, self._loop, self._stop = server.url, asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "BackgroundService":
        self._thread.start()
        if not self._ready.wait(120):
            raise RuntimeError("the service did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="tiny", help="tiny, instant, or a --model for the local backend")
    parser.add_argument("--url", help="load an existing service instead of starting one")
    parser.add_argument("--token-env", help="environment variable holding the service's bearer token")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--prompts", type=int, default=4, help="candidates per request")
    parser.add_argument("--upload", choices=("projection", "embeddings"), default="projection")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    token = os.environ.get(args.token_env) if args.token_env else None
    load = dict(clients=args.clients, requests=args.requests, prompts=args.prompts, upload=args.upload, token=token)
    if args.url:
        report = asyncio.run(run_load(args.url.rstrip("/"), **load))  # type: ignore[arg-type]
        where = args.url
    else:
        with tempfile.TemporaryDirectory() as workdir:
            backend = open_backend(args.backend, workdir)
            with BackgroundService(backend, ServerConfig(port=0)) as service:
                report = asyncio.run(run_load(service.url, **load))  # type: ignore[arg-type]
            asyncio.run(backend.aclose())
        where = f"{args.backend} backend on 127.0.0.1"
    if args.json:
        print(json.dumps({**asdict(report), "service": where, **{k: v for k, v in load.items() if k != "token"}}))
    else:
        print(f"{where}, {args.clients} clients x {args.requests} requests x {args.prompts} candidates ({args.upload}):")
        print(report.line())


if __name__ == "__main__":
    main()
