"""Tuning through a real vLLM server: the CLI end to end, a SIGKILL and a resume, and a fault proxy.

The server (scripts/vllm_server.sh, see ``vllm_support``) returns the same scores for the same
requests, so a resumed run and a run through injected faults must end exactly as an
uninterrupted, fault-free run: the same best z, history, dev and test results, and ledger calls.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from remote_support import RecordingSleep, sentiment_task
from resume_support import CliProcess, assert_same_outcome
from test_remote_fit import assert_same_fit, fit

import vllm_support
from lmaas_tune.backends.http import RetryConfig, Timeouts
from lmaas_tune.backends.vllm import RequestLimits, VllmBackend
from lmaas_tune.methods import TuneConfig

pytestmark = pytest.mark.vllm

CFG = TuneConfig(prompt_length=4, intrinsic_dim=8, popsize=6, budget=36, k_shot=4, eval_every=12, seed=5)
TINY = ["--prompt-length", "4", "--intrinsic-dim", "8", "--popsize", "6", "--budget", "36", "--k-shot", "4",
        "--eval-every", "12", "--seed", "5"]


def _task_args(tmp: Path) -> list[str]:
    sentiment_task(tmp)
    return ["--task", "custom", "--template", "{sentence} . It was {mask}", "--label-words", "bad,great",
            "--train-file", str(tmp / "train.tsv"), "--test-file", str(tmp / "test.tsv")]


def _cli(args: list[str], **env: str) -> CliProcess:
    return CliProcess(args, LMAAS_TUNE_TOKEN=vllm_support.KEY, **env)


def test_cli_fit_evaluates_predicts_and_resumes_after_sigkill_to_the_same_result(vllm_url: str, tmp_path: Path) -> None:
    backend = ["--backend", "vllm", "--endpoint", vllm_url, "--model", vllm_support.MODEL]
    command = ["fit", *_task_args(tmp_path), *backend, *TINY, "--json"]

    whole = tmp_path / "whole"
    code, out, err = _cli([*command, "--output", str(whole)]).finish()
    assert code == 0, err
    result = json.loads(out)
    assert result["calls"] == 36 and result["ledger"]["calls"] == 36 and result["ledger"]["eval_calls"] >= 1
    assert result["ledger"]["bytes_up"] > 36 * 8 * 576 * 4  # every row's embeddings went over the wire
    saved = json.loads((whole / "config.json").read_text("utf-8"))["backend"]
    assert saved["backend"] == "vllm" and saved["endpoints"] == [vllm_url] and saved["model"] == vllm_support.MODEL
    assert vllm_support.KEY not in (whole / "config.json").read_text("utf-8")

    # killed right after generation 3's checkpoint is written, before it is renamed into place
    killed = tmp_path / "killed"
    p = _cli([*command, "--output", str(killed)], LMAAS_TUNE_TEST_PAUSE="3:commit")
    p.wait_for("LMAAS_TUNE_TEST_PAUSED commit 3")
    p.signal(signal.SIGKILL)
    assert p.finish()[0] == -signal.SIGKILL
    code, out, err = _cli(["resume", str(killed), "--json"]).finish()
    assert code == 0, err
    assert_same_outcome(killed, whole)

    code, out, err = _cli(["evaluate", str(whole), "--json"]).finish()  # re-scored through the server
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["value"] == result["test"]["value"] and evaluated["ledger"]["eval_calls"] >= 1

    texts = tmp_path / "texts.txt"
    texts.write_text("what a great movie\nthe plot was terrible\n", "utf-8")
    moved = vllm_url.replace("127.0.0.1", "localhost")  # the server under another address: still vLLM
    code, out, err = _cli(["predict", str(whole), "--input", str(texts), "--endpoint", moved]).finish()
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["label"] for r in rows] and len(rows) == 2 and "uncharged call" in err


# -- a fault-injecting proxy in front of vLLM ---------------------------------------------------------

KINDS = ("429", "500", "502", "503", "slow", "drop", "malformed", "few-choices")


@dataclass
class FaultProxy:
    """Forwards to vLLM; answers chosen ``/v1/completions`` arrivals with a fault instead."""

    upstream: str
    plan: dict[int, str]
    arrivals: int = 0
    rows_seen: Counter[int] = field(default_factory=Counter)  # request size -> requests of it
    injected: Counter[str] = field(default_factory=Counter)
    session: aiohttp.ClientSession | None = None

    async def forward(self, request: web.Request, body: bytes) -> tuple[int, bytes, str]:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self.session.request(request.method, self.upstream + request.path_qs, data=body,
                                        headers=headers) as resp:
            return resp.status, await resp.read(), resp.content_type

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = None
        if request.path == "/v1/completions":
            fault = self.plan.get(self.arrivals)
            self.arrivals += 1
        if fault is None:
            status, answer, ctype = await self.forward(request, body)
            return web.Response(status=status, body=answer, content_type=ctype)
        self.injected[fault] += 1

        def error(status: int, **headers: str) -> web.Response:
            return web.json_response({"error": {"message": f"injected {fault}", "type": "Injected", "code": status}},
                                     status=status, headers=headers)

        if fault == "429":
            return error(429, **{"Retry-After": "2"})
        if fault in ("500", "502"):
            return error(int(fault))
        if fault == "503":
            return error(503, **{"Retry-After": "1"})
        if fault == "slow":  # answer only once the client has given up waiting
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.01)
            return error(500)
        status, answer, _ = await self.forward(request, body)
        if fault == "malformed":
            return web.Response(status=200, body=answer[: len(answer) // 3], content_type="application/json")
        if fault == "few-choices":
            doc = json.loads(answer)
            doc["choices"] = doc["choices"][:-1]
            return web.json_response(doc)
        assert fault == "drop"  # headers and half the body, then the connection goes
        stream = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        stream.content_length = len(answer)
        await stream.prepare(request)
        await stream.write(answer[: len(answer) // 2])
        assert request.transport is not None
        request.transport.close()
        return stream


def fault_plan(seed: int) -> dict[int, str]:
    rng = random.Random(seed)
    kinds = list(KINDS) + ["429", "drop", "500"]
    rng.shuffle(kinds)
    plan, i = {}, 1  # arrival 0 is the probe the backend sends when it connects
    for kind in kinds:
        i += rng.randint(0, 2)
        plan[i] = kind
        i += 1
    return plan


async def test_a_fit_through_faults_ends_as_the_fault_free_vllm_fit(vllm_url: str, tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    limits = RequestLimits(max_prompts=16)  # several requests per population, so faults hit some of them
    async with VllmBackend([vllm_url], vllm_support.MODEL, token=vllm_support.KEY, requests=limits) as vb:
        fault_free = await fit(task, vb, CFG, concurrency=3)

    proxy = FaultProxy(vllm_url, fault_plan(3))
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sleep = RecordingSleep()
    retry = RetryConfig(max_attempts=len(proxy.plan) + 1, base_delay=0.25, max_delay=4.0, max_retry_after=5.0)
    try:
        async with aiohttp.ClientSession() as proxy.session:
            async with VllmBackend([f"http://127.0.0.1:{port}"], vllm_support.MODEL, token=vllm_support.KEY,
                                   requests=limits, retry=retry, timeouts=Timeouts(connect=5.0, request=20.0),
                                   sleep=sleep) as vb:
                faulty = await fit(task, vb, CFG, concurrency=3)
    finally:
        await runner.cleanup()
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()

    assert set(proxy.injected) == set(KINDS)  # every kind of fault happened, and changed nothing
    assert_same_fit(faulty, fault_free)
    got, want = faulty[0].ledger, fault_free[0].ledger
    injected = sum(proxy.injected.values())
    assert got["calls"] == want["calls"] == CFG.budget and got["eval_calls"] == want["eval_calls"]
    assert got["failures"] == got["retries"] == injected
    assert got["attempts"] == want["attempts"] + injected  # one extra attempt per fault, nothing else
    assert len(sleep.delays) == injected and 2.0 in sleep.delays and 1.0 in sleep.delays


def test_the_vllm_example_runs(vllm_url: str, tmp_path: Path) -> None:
    """The example end to end on a task file (examples/custom_task.toml's task, its test set cut to
    64 sentences: the example's own code path, without scoring 872 sentences twice)."""
    import os
    import subprocess
    import sys

    data = vllm_support.ROOT / "lmaas_tune" / "data" / "sst2"
    (tmp_path / "test.tsv").write_text("".join((data / "dev.tsv").read_text("utf-8").splitlines(True)[:65]), "utf-8")
    spec = tomllib.loads((vllm_support.ROOT / "examples" / "custom_task.toml").read_text("utf-8"))
    spec.update(train=str(data / "train.tsv"), test=str(tmp_path / "test.tsv"))
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(spec), "utf-8")
    env = {**os.environ, "LMAAS_TUNE_TOKEN": vllm_support.KEY, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(vllm_support.ROOT / "examples" / "vllm_fit.py"), vllm_url, "--budget", "20",
                           "--task-file", str(task_file)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tuning movie-sentiment through it" in done.stdout and "20 calls in" in done.stdout
    assert "test accuracy" in done.stdout and "on 64 movie-sentiment examples" in done.stdout
