"""The remote path's own costs, on 127.0.0.1, against a model-free backend (CPU-cheap).

1. Latency hiding: the service adds ``--latency`` seconds (default 0.1) to every score request.
   A generation of 20 candidates is sent one request per candidate, one at a time (as the BBT
   reference implementation does) and then 20 at once; the ratio of the two times is printed,
   and the concurrent time in units of the latency (ideal: 1). A generation in a single request
   is shown for reference.
2. Client overhead: against an instant service, calls per second (one candidate per request,
   one at a time) of the remote backend versus a bare aiohttp loop posting the same pre-encoded
   body on one keep-alive session; both measured in this run, so the ratio is the overhead of
   encoding, decoding, validation, metering and retry machinery. In-process scoring (no HTTP) is
   shown for reference.

The backend returns logits computed from the prompts' means (no model), so the numbers measure
HTTP, JSON/base64, batching and the client, not a forward pass.

    python benchmarks/remote.py [--latency 0.1] [--calls 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from instant_backend import InstantBackend

from lmaas_tune.backends.base import (
    Query,
    ScoringBatch,
)
from lmaas_tune.backends.http.ratelimit import EndpointLimits
from lmaas_tune.backends.remote.client import RemoteBackend
from lmaas_tune.wire import encode_array
from lmaas_tune.tuning.ledger import BudgetLedger
from lmaas_tune.tuning.scheduler import PopulationScheduler
from lmaas_tune.server import RunningServer, ServerConfig, create_app

HIDDEN, PROMPT_LENGTH, POPSIZE = 64, 10, 20


BATCH = ScoringBatch(tuple(Query(f"sentence number {i} was") for i in range(32)), ("bad", "great"))


async def _service(latency: float) -> RunningServer:
    config = ServerConfig(port=0, batch_window_s=0.002)
    backend = InstantBackend(HIDDEN)
    app = create_app(backend, config)

    @web.middleware
    async def delay(request: web.Request, handler: Any) -> web.StreamResponse:
        if latency and request.path == "/v1/score":
            await asyncio.sleep(latency)
        return await handler(request)

    app.middlewares.append(delay)
    return await RunningServer(backend, config, app=app).start()


async def _generation(remote: RemoteBackend, prompts: np.ndarray, concurrency: int, chunk: int) -> float:
    sched = PopulationScheduler(remote, BudgetLedger(len(prompts)), concurrency=concurrency, chunk_size=chunk)
    start = time.perf_counter()
    await sched.evaluate(prompts, BATCH, charged=False)
    return time.perf_counter() - start


async def latency_hiding(latency: float, repeats: int) -> dict[str, float]:
    server = await _service(latency)
    prompts = np.random.default_rng(0).standard_normal((POPSIZE, PROMPT_LENGTH, HIDDEN)).astype(np.float32)
    try:
        async with RemoteBackend([server.url], limits=EndpointLimits(max_in_flight=POPSIZE)) as remote:
            await _generation(remote, prompts, POPSIZE, 1)  # warm up: registration, connections
            seq = statistics.median([await _generation(remote, prompts, 1, 1) for _ in range(repeats)])
            par = statistics.median([await _generation(remote, prompts, POPSIZE, 1) for _ in range(repeats)])
            one = statistics.median([await _generation(remote, prompts, 1, POPSIZE) for _ in range(repeats)])
    finally:
        await server.stop()
    return {"latency_s": latency, "one_at_a_time_s": seq, "concurrent_s": par, "single_request_s": one,
            "speedup": seq / par, "concurrent_in_latencies": par / latency}


async def client_overhead(calls: int) -> dict[str, float]:
    server = await _service(0.0)
    prompt = np.random.default_rng(1).standard_normal((1, PROMPT_LENGTH, HIDDEN)).astype(np.float32)
    try:
        async with RemoteBackend([server.url], limits=EndpointLimits(max_in_flight=1)) as remote:
            await remote.score(prompt, BATCH)  # registers the batch, opens the connection
            start = time.perf_counter()
            for _ in range(calls):
                await remote.score(prompt, BATCH)
            remote_rate = calls / (time.perf_counter() - start)

        body = json.dumps({"protocol": 1, "batch_key": BATCH.key, "prompts": encode_array(prompt)}).encode()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            async def post() -> None:
                async with session.post(server.url + "/v1/score", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()

            await post()
            start = time.perf_counter()
            for _ in range(calls):
                await post()
            raw_rate = calls / (time.perf_counter() - start)
    finally:
        await server.stop()
    backend = InstantBackend(HIDDEN)
    start = time.perf_counter()
    for _ in range(calls):
        await backend.score(prompt, BATCH)
    local_rate = calls / (time.perf_counter() - start)
    return {"remote_calls_per_s": remote_rate, "bare_aiohttp_calls_per_s": raw_rate, "in_process_calls_per_s": local_rate,
            "remote_over_bare": remote_rate / raw_rate,
            "client_overhead_ms_per_call": 1000 * (1 / remote_rate - 1 / raw_rate)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the service adds per score request")
    parser.add_argument("--calls", type=int, default=300, help="calls for the overhead measurement")
    parser.add_argument("--repeats", type=int, default=3, help="generations per mode (median reported)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    hiding = await latency_hiding(args.latency, args.repeats)
    overhead = await client_overhead(args.calls)
    if args.json:
        print(json.dumps({"latency_hiding": hiding, "client_overhead": overhead}, indent=1))
        return
    ms = lambda s: f"{1000 * s:7.1f} ms"  # noqa: E731
    print(f"generation of {POPSIZE} candidates (L={PROMPT_LENGTH}, D={HIDDEN}, {len(BATCH)} examples), "
          f"service adds {ms(args.latency).strip()} per request; median of {args.repeats}:")
    print(f"  one request per candidate, one at a time  {ms(hiding['one_at_a_time_s'])}")
    print(f"  one request per candidate, {POPSIZE} at once     {ms(hiding['concurrent_s'])}"
          f"  = {hiding['concurrent_in_latencies']:.2f} latencies")
    print(f"  the whole generation in one request       {ms(hiding['single_request_s'])}")
    print(f"  speedup, {POPSIZE} at once vs one at a time:      {hiding['speedup']:.1f}x")
    print(f"client overhead against an instant service ({args.calls} sequential calls, 1 candidate each):")
    print(f"  remote backend      {overhead['remote_calls_per_s']:8.0f} calls/s")
    print(f"  bare aiohttp POST   {overhead['bare_aiohttp_calls_per_s']:8.0f} calls/s")
    print(f"  in process, no HTTP {overhead['in_process_calls_per_s']:8.0f} calls/s")
    print(f"  remote / bare:      {overhead['remote_over_bare']:.2f} "
          f"({overhead['client_overhead_ms_per_call']:.2f} ms of client work per call)")


if __name__ == "__main__":
    asyncio.run(main())
