"""examples/web_service.py on a real aiohttp server on 127.0.0.1 with the tiny Llama: two jobs tuned at once
through one backend, their progress read over SSE, predictions served with the tuned prompts."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from remote_support import WrappedBackend
from test_cli import NEG, POS

from lmaas_tune import Backend, BlackBoxTuner, LocalBackend, Projection, ProjectionSpec, ScoringBatch

ROOT = Path(__file__).resolve().parents[1]


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("web_service_example", ROOT / "examples" / "web_service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


example = _load_example()


class MeetingBackend(WrappedBackend):
    """The real tiny model; its first ``score`` calls wait until ``expected`` of them are waiting at once,
    which only happens if that many jobs score through this one backend concurrently."""

    def __init__(self, inner: Backend, expected: int) -> None:
        super().__init__(inner)
        self.expected = expected
        self.waiting, self.met = 0, asyncio.Event()

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        if not self.met.is_set():
            self.waiting += 1
            if self.waiting >= self.expected:
                self.met.set()
            await self.met.wait()
        return await self.inner.score(prompts, batch)


@asynccontextmanager
async def running(backend: Backend, work_dir: Path) -> AsyncIterator[str]:
    runner = web.AppRunner(example.create_app(backend, work_dir), shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def read_sse(session: aiohttp.ClientSession, url: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a Server-Sent Events stream, until the server ends it."""
    events: list[tuple[str, dict[str, Any]]] = []
    async with session.get(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        name, data = "message", ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data += line[len("data: "):]
            elif not line and data:
                events.append((name, json.loads(data)))
                name, data = "message", ""
    return events


SETTINGS = {"budget": 12, "popsize": 4, "prompt_length": 2, "intrinsic_dim": 8, "k_shot": 2, "eval_every": 4}
TEXTS = POS + NEG
JOBS = [
    {"texts": TEXTS, "labels": ["great"] * len(POS) + ["bad"] * len(NEG), "template": "{sentence} . It was {mask}",
     "label_words": ["bad", "great"], "seed": 3, **SETTINGS},
    {"texts": TEXTS, "labels": [1] * len(POS) + [0] * len(NEG), "template": "{text} It was {mask}",
     "label_words": ["terrible", "good"], "seed": 4, **SETTINGS},
]


async def test_two_jobs_at_once_stream_progress_and_serve_predictions(llama_backend: LocalBackend, tmp_path: Path) -> None:
    shared = MeetingBackend(llama_backend, expected=2)
    async with running(shared, tmp_path / "jobs") as url, aiohttp.ClientSession() as session:
        created = await asyncio.gather(*(session.post(f"{url}/jobs", json=body) for body in JOBS))
        ids = []
        for resp in created:
            assert resp.status == 202, await resp.text()
            job = await resp.json()
            ids.append(job["id"])
            assert job["events"] == f"/jobs/{job['id']}/events"
        assert len(set(ids)) == 2

        streams = await asyncio.gather(*(read_sse(session, f"{url}/jobs/{i}/events") for i in ids))
        assert shared.met.is_set()  # both jobs were scoring through the one backend at the same time
        for events in streams:
            names = [n for n, _ in events]
            assert names == ["dev_checked", "generation"] * 3 + ["budget_spent", "done"]  # a check ends its generation
            gens = [d for n, d in events if n == "generation"]
            assert [g["calls"] for g in gens] == [4, 8, 12] and all(g["budget"] == 12 for g in gens)
            checks = [d for n, d in events if n == "dev_checked"]
            assert [c["calls"] for c in checks] == [4, 8, 12]
            done = events[-1][1]
            assert done["calls"] == 12 and done["dev"] == max(c["value"] for c in checks) and done["retries"] == 0

        # a client that connects after the end gets the whole story again
        assert await read_sse(session, f"{url}/jobs/{ids[0]}/events") == streams[0]

        queries = ["what a great movie", "a terrible , bad movie", "it was good fun"]
        for job_id, body, events in zip(ids, JOBS, streams):
            async with session.get(f"{url}/jobs/{job_id}") as resp:
                state = await resp.json()
            assert state["status"] == "done" and state["result"] == events[-1][1]
            run_dir = Path(state["run_dir"])
            assert json.loads((run_dir / "result.json").read_text())["dev"] == state["result"]["dev"]

            async with session.post(f"{url}/jobs/{job_id}/predict", json={"texts": queries}) as resp:
                assert resp.status == 200, await resp.text()
                got = await resp.json()
            words = body["label_words"]
            assert len(got["labels"]) == len(queries)
            assert got["label_words"] == [words[i] for i in got["labels"]]
            assert got["labels"] == await tuned_predictions(llama_backend, run_dir, body["template"], words, queries)

        async with session.post(f"{url}/jobs/nope/predict", json={"texts": ["x"]}) as resp:
            assert resp.status == 404
        bad = {**JOBS[0], "template": "{sentence} without a slot for the label"}
        async with session.post(f"{url}/jobs", json=bad) as resp:
            assert resp.status == 400 and "{mask}" in (await resp.json())["error"]
        async with session.post(f"{url}/jobs", json={**JOBS[0], "labels": ["great"] * len(TEXTS)}) as resp:
            assert resp.status == 400 and "too few training examples" in (await resp.json())["error"]


async def tuned_predictions(backend: Backend, run_dir: Path, template: str, words: list[str], texts: list[str]) -> list[int]:
    """What the run directory's best prompt predicts, computed here with the library alone."""
    from lmaas_tune import custom_task
    from lmaas_tune.tasks.data import Example

    best = json.loads((run_dir / "best.json").read_text())
    prompt = Projection(ProjectionSpec(**best["projection"]))(np.asarray(best["z"]))
    field = template[template.index("{") + 1:template.index("}")]
    data = run_dir.parent / "data" / "examples.jsonl"
    task = custom_task(template=template, label_words=words, train=str(data), test=str(data))
    batch = task.render([Example({field: t}, 0) for t in texts], backend.info.kind)
    logits = await backend.score(prompt, batch)
    return [int(i) for i in logits[0].argmax(-1)]


async def test_shutting_down_stops_running_jobs_and_leaves_them_resumable(llama_backend: LocalBackend,
                                                                         tmp_path: Path) -> None:
    body = {**JOBS[0], "budget": 160, "eval_every": 40}
    async with aiohttp.ClientSession() as session:
        async with running(llama_backend, tmp_path / "jobs") as url:
            async with session.post(f"{url}/jobs", json=body) as resp:
                job_id = (await resp.json())["id"]
            async with session.get(f"{url}/jobs/{job_id}/events") as resp:
                first = await resp.content.readline()  # the job is tuning
                assert first.startswith(b"event: ")
            async with session.get(f"{url}/jobs/{job_id}") as resp:
                assert (await resp.json())["status"] == "running"
        # leaving the block shut the service down: the job was cancelled mid-run
        checkpoint = json.loads((tmp_path / "jobs" / job_id / "run" / "checkpoint.json").read_text())
        assert checkpoint["status"] == "interrupted" and checkpoint["stopped_by"] == "cancelled"
        assert checkpoint["ledger"]["calls"] < body["budget"]
    resumed = await BlackBoxTuner.resume(tmp_path / "jobs" / job_id / "run", llama_backend, evaluate_test=False)
    assert resumed.calls == body["budget"]
