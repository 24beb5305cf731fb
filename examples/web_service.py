"""A web service that tunes prompts on request: several jobs at once, one shared model.

    python examples/web_service.py                          # the embedded SmolLM2-135M on 127.0.0.1:8000
    python examples/web_service.py --model ./some-model-dir --port 8001 --work-dir jobs

    curl -s localhost:8000/jobs -d '{"texts": ["a great movie", "a dull movie", ...],
        "labels": ["positive", "negative", ...], "template": "Review: {text}\\nSentiment:{mask}",
        "label_words": ["negative", "positive"], "budget": 40}'
    curl -N localhost:8000/jobs/JOB/events                  # progress as Server-Sent Events
    curl -s localhost:8000/jobs/JOB/predict -d '{"texts": ["what a fine film"]}'

Routes:

``POST /jobs``                 a tuning job: ``texts`` and ``labels`` (label words or their indices),
                               ``template`` (one ``{field}`` slot and ``{mask}``), ``label_words``, and
                               optionally ``budget``, ``popsize``, ``prompt_length``, ``intrinsic_dim``,
                               ``k_shot``, ``eval_every``, ``seed``. 202 with the job's id and URLs.
``GET  /jobs/{id}``            its status, and its result once done.
``GET  /jobs/{id}/events``     Server-Sent Events: every event so far, then the rest live
                               (``generation``, ``dev_checked``, ``retry``, ``budget_spent``), ending with
                               ``done`` (the result) or ``failed`` (the error).
``POST /jobs/{id}/predict``    ``{"texts": [...]}``: the label words the tuned prompt predicts.

Every job is a :class:`~lmaas_tune.BlackBoxTuner` streamed in a task of its own; all of them score
through the one backend this process loaded (its worker thread and limits are shared), at most
``--max-running`` at a time. Each job keeps a run directory under ``--work-dir``, so
``lmaas-tune report WORK_DIR/*/run`` summarises them, and a job stopped by shutting the service
down can be resumed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from lmaas_tune import (Backend, BlackBoxTuner, BudgetSpent, DevChecked, FitResult, GenerationReport, LmaasTuneError,
                        LocalBackend, Retry, TaskSpec, TuneConfig)
from lmaas_tune.tuning.evaluation import prepare, score_prompt
from lmaas_tune.tuning.fewshot import FewShotSplit
from lmaas_tune.tasks.data import Example
from lmaas_tune.tasks.task import Task
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.runs.results import finite_or_none

log = logging.getLogger("web_service")

#: the SSE event name of each progress event (test-set progress is not tuning progress: not sent)
EVENT_NAMES: dict[type, str] = {GenerationReport: "generation", DevChecked: "dev_checked", Retry: "retry",
                                BudgetSpent: "budget_spent"}
#: what a job may set, and its default: a small budget, so a job takes seconds to minutes
SETTINGS = {"budget": 40, "popsize": 10, "prompt_length": 5, "intrinsic_dim": 100, "k_shot": 4, "eval_every": 20,
            "seed": 42}
MAX_BUDGET = 2000


class BadRequest(Exception):
    """A job request the service refuses (400), with the reason."""


@dataclasses.dataclass
class Job:
    """One tuning job: its task, settings, run directory, what it emitted so far, and its outcome."""

    id: str
    task: Task
    config: TuneConfig
    run_dir: Path
    status: str = "queued"  # queued, running, done, failed
    events: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    result: FitResult | None = None
    prompt: np.ndarray | None = None
    changed: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)

    async def publish(self, name: str, data: dict[str, Any]) -> None:
        async with self.changed:
            self.events.append((name, data))
            self.changed.notify_all()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status, "task": self.task.name,
                               "settings": self.config.to_dict(), "run_dir": str(self.run_dir)}
        if self.result is not None:
            out["result"] = result_record(self.result)
        return out


def result_record(r: FitResult) -> dict[str, Any]:
    return {"metric": r.metric, "dev": r.dev, "train_loss": finite_or_none(r.train_loss), "calls": r.calls,
            "wall_time_s": round(r.wall_time, 3), "retries": r.ledger.get("retries", 0)}


def _field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None or not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise BadRequest(f"{name!r} must be a {kind.__name__}" + ("" if default is not None else " (required)"))
    return value


class TuningService:
    """The jobs of one service and the one backend they share."""

    def __init__(self, backend: Backend, work_dir: Path, *, max_running: int = 4) -> None:
        self.backend, self.work_dir = backend, work_dir
        self.jobs: dict[str, Job] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.running = asyncio.Semaphore(max_running)

    def submit(self, body: Any) -> Job:
        """Check a job request, write its examples, and start it."""
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        texts, labels = _field(body, "texts", list), _field(body, "labels", list)
        words = [str(w) for w in _field(body, "label_words", list)]
        template = _field(body, "template", str)
        if len(texts) != len(labels) or not texts:
            raise BadRequest(f"'texts' and 'labels' must be non-empty and as long as each other ({len(texts)} vs {len(labels)})")
        index = {w: i for i, w in enumerate(words)}
        rows = []
        for text, label in zip(texts, labels):
            y = label if isinstance(label, int) and 0 <= label < len(words) else (
                index.get(label) if isinstance(label, str) else None)
            if y is None or not isinstance(text, str):
                raise BadRequest(f"label {label!r} is not one of the label words {words} (or an index into them)")
            rows.append({"text": text, "label": str(y)})
        settings = {k: _field(body, k, int, v) for k, v in SETTINGS.items()}
        if settings["budget"] > MAX_BUDGET:
            raise BadRequest(f"'budget' may be at most {MAX_BUDGET} calls here")

        job_id = uuid.uuid4().hex[:12]
        home = self.work_dir / job_id
        (home / "data").mkdir(parents=True)
        data = home / "data" / "examples.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
        try:
            spec = TaskSpec("custom", template, tuple(words), str(data), str(data), labels=tuple(map(str, range(len(words)))))
            fields = spec.build().format_for(self.backend.info.kind).template.fields  # checks it suits the model
            if len(fields) != 1:
                raise BadRequest(f"the template must have one {{field}} slot for the text; it has {list(fields)}")
            spec = dataclasses.replace(spec, columns={fields[0]: "text"})
            task = spec.build()
            config = TuneConfig(**settings)
            FewShotSplit.draw(task.load("train"), config.k_shot, config.seed, task.num_labels)
        except LmaasTuneError as exc:
            raise BadRequest(str(exc)) from None
        job = Job(job_id, task, config, home / "run")
        self.jobs[job_id] = job
        record = RunConfig(tune=config, task=spec, notes={"service_job": job_id})
        tuner = BlackBoxTuner(task, self.backend, config, run_dir=job.run_dir, record=record, evaluate_test=False)
        runner = asyncio.ensure_future(self._run(job, tuner))
        self.tasks.add(runner)
        runner.add_done_callback(self.tasks.discard)
        return job

    async def _run(self, job: Job, tuner: BlackBoxTuner) -> None:
        try:
            async with self.running:
                job.status = "running"
                async with tuner.stream() as stream:
                    async for item in stream:
                        name = EVENT_NAMES.get(type(item))
                        if name is not None:
                            await job.publish(name, dataclasses.asdict(item))
                        elif isinstance(item, FitResult):
                            job.prompt = item.prompt()
                            job.result, job.status = item, "done"
                            await job.publish("done", result_record(item))
        except asyncio.CancelledError:
            job.status = "failed"
            await job.publish("failed", {"error": "the service stopped; the run directory can be resumed"})
            raise
        except Exception as exc:  # noqa: BLE001 - a failed job is reported to its client, the service goes on
            log.warning("job %s failed: %s", job.id, exc)
            job.status = "failed"
            await job.publish("failed", {"error": f"{type(exc).__name__}: {exc}"})

    async def predict(self, job: Job, texts: list[str]) -> list[int]:
        """The tuned prompt's label index for each text (too long for the model: an error)."""
        assert job.prompt is not None
        field = job.task.format_for(self.backend.info.kind).template.fields[0]
        examples = [Example({field: t}, 0) for t in texts]
        data = await prepare(self.backend, job.task, examples, len(job.prompt), what="texts", on_long="error")
        scores = await score_prompt(self.backend, job.prompt, data)
        return [int(i) for i in data.class_scores(scores).argmax(-1)]  # label words grouped into labels

    async def close(self) -> None:
        """Stop the jobs still running (each one's run directory stays resumable)."""
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


SERVICE = web.AppKey("service", TuningService)


def _job(request: web.Request) -> Job:
    job = request.app[SERVICE].jobs.get(request.match_info["id"])
    if job is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such job"}), content_type="application/json")
    return job


async def create_job(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        job = request.app[SERVICE].submit(body)
    except (ValueError, BadRequest) as exc:
        return web.json_response({"error": str(exc) or "the body is not JSON"}, status=400)
    base = f"/jobs/{job.id}"
    return web.json_response({"id": job.id, "status": job.status, "url": base, "events": f"{base}/events",
                              "predict": f"{base}/predict"}, status=202)


async def show_job(request: web.Request) -> web.Response:
    return web.json_response(_job(request).describe())


async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: everything the job emitted so far, then live, until ``done`` or ``failed``."""
    job = _job(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    sent = 0
    try:
        while True:
            async with job.changed:
                await job.changed.wait_for(lambda: len(job.events) > sent)
                batch = job.events[sent:]
            for name, data in batch:
                await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            sent += len(batch)
            if batch[-1][0] in ("done", "failed"):
                break
        await resp.write_eof()
    except ConnectionResetError:  # the client went away; the job goes on
        pass
    return resp


async def predict(request: web.Request) -> web.Response:
    job = _job(request)
    if job.status != "done":
        return web.json_response({"error": f"the job is {job.status}; predictions need a finished job"}, status=409)
    try:
        body = await request.json()
        texts = _field(body, "texts", list) if isinstance(body, dict) else None
        if not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest("'texts' must be a non-empty list of strings")
        labels = await request.app[SERVICE].predict(job, texts)
    except (ValueError, BadRequest, LmaasTuneError) as exc:
        return web.json_response({"error": str(exc) or "the body is not JSON"}, status=400)
    words = job.task.format_for(request.app[SERVICE].backend.info.kind).verbalizer.names
    return web.json_response({"labels": labels, "label_words": [words[i] for i in labels]})


def create_app(backend: Backend, work_dir: str | Path, *, max_running: int = 4) -> web.Application:
    """The service's application; ``backend`` stays the caller's (it is not closed here)."""
    app = web.Application()
    service = TuningService(backend, Path(work_dir), max_running=max_running)
    app[SERVICE] = service
    app.router.add_post("/jobs", create_job)
    app.router.add_get("/jobs/{id}", show_job)
    app.router.add_get("/jobs/{id}/events", job_events)
    app.router.add_post("/jobs/{id}/predict", predict)

    async def stop_jobs(_: web.Application) -> None:
        await service.close()

    app.on_shutdown.append(stop_jobs)  # before the server waits for open event streams to end
    return app


def main(argv: list[str] | None = None, *, on_ready: Callable[[str], None] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", default="smollm2-135m", help="embedded name, .gguf file or model directory")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--work-dir", default="service-jobs", help="where each job keeps its data and run directory")
    ap.add_argument("--max-running", type=int, default=4, help="jobs tuning at once (the rest wait)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # the application's choice

    async def run() -> None:
        async with LocalBackend.load(args.model, device=args.device) as backend:
            app = create_app(backend, args.work_dir, max_running=args.max_running)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, args.host, args.port)
            await site.start()
            url = f"http://{args.host}:{runner.addresses[0][1]}"
            log.info("tuning service for %s on %s", backend.info.model_id, url)
            if on_ready is not None:
                on_ready(url)
            try:
                await asyncio.Event().wait()  # until Ctrl-C
            finally:
                await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
