"""Sweeps: what running trials side by side on Ray buys over running them one after another.

Two measurements, each a ratio against a baseline run in this same process:

1. **Sequential fits vs a sweep with 2 workers.** ``--trials`` light fits (a small custom sentiment
   task, ``--budget`` calls, L=10, d=500, popsize 20) on the local backend (``--model``, default the
   embedded model): first one after another in this process (torch with every core, each fit loading
   its model as a trial does), then as a sweep on a local Ray with 2 trials at once, one CPU (and
   one torch thread) each. Reported: both wall times and their ratio.
2. **8 light trials against one ``lmaas-tune serve``.** One service (``--server-model``, started
   here as a subprocess on 127.0.0.1) scores for every trial: first one trial alone, then 8 at once
   (``--cpus-per-trial 0.25``: they share the cores with the service). Reported: the aggregate
   calls per second (charged calls over wall time) of the 8 against the one trial's.

    python benchmarks/sweep.py [--model smollm2-135m] [--trials 4] [--budget 60] [--server-model smollm2-135m]
    python benchmarks/sweep.py --part 2 --json

Needs the ray extra (``pip install 'lmaas-tune[ray]'``). Timings include model loading and the
final test scoring (16 sentences, manual prompt included) of every trial; a sweep's time includes
starting and stopping its local Ray (5-10 s on 2 cores), as ``lmaas-tune sweep`` pays it. A smoke
run on a tiny random model (2 trials of 40 calls) took 95 s in all; it is not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lmaas_tune  # noqa: E402
from lmaas_tune.backends.factory import BackendSettings, open_backend  # noqa: E402
from lmaas_tune.tasks.spec import TaskSpec  # noqa: E402
from lmaas_tune.tuning import workflows  # noqa: E402

POS = ["it was a great movie", "a good movie , great fun", "great acting and a good plot", "what a great movie",
       "a wonderful film", "a great , great movie", "the acting is good", "it was great fun"]
NEG = ["it was a bad movie", "a terrible movie", "the plot was terrible", "bad acting and a bad ending",
       "it was terrible", "the ending was bad", "a bad , bad movie", "a boring film"]


def sentiment(directory: Path) -> TaskSpec:
    rows = [(s, "1") for s in POS] + [(s, "0") for s in NEG]
    for name in ("train.tsv", "test.tsv"):
        (directory / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows), "utf-8")
    return TaskSpec("movies", "Review: {sentence}\nSentiment:{mask}", ("negative", "positive"),
                    str(directory / "train.tsv"), str(directory / "test.tsv"))


def sequential_vs_sweep(model: str, trials: int, budget: int, work: Path) -> dict[str, Any]:
    task = sentiment(work)
    settings = BackendSettings(model=model, device="cpu")
    tune = dict(preset="cpu", budget=budget, k_shot=4, eval_every=20)
    specs = lmaas_tune.grid([task], seeds=list(range(42, 42 + trials)), backend=settings, **tune)

    async def one(i: int) -> None:
        backend = open_backend(settings)
        async with backend:
            await workflows.fit(specs[i].task, backend, settings, specs[i].tune, output=work / f"seq{i}")

    start = time.perf_counter()
    for i in range(trials):
        asyncio.run(one(i))
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    table = lmaas_tune.sweep(specs, work / "sweep", cpus_per_trial=1, max_concurrent=2)
    swept = time.perf_counter() - start
    assert all(t.status == "finished" for t in table.trials), table.trials
    return {"trials": trials, "budget": budget, "model": model, "sequential_s": round(sequential, 1),
            "sweep_2_workers_s": round(swept, 1), "speedup": round(sequential / swept, 2)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def against_one_service(model: str, budget: int, work: Path) -> dict[str, Any]:
    task = sentiment(work)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "lmaas_tune", "serve", "--model", model, "--host", "127.0.0.1",
                               "--port", str(port), "--device", "cpu"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("lmaas-tune serve did not start")
            time.sleep(0.5)
        settings = BackendSettings(backend="remote", endpoints=(f"http://127.0.0.1:{port}",))
        tune = dict(preset="cpu", budget=budget, k_shot=4, eval_every=20)
        runs = {}
        for n in (1, 8):
            specs = lmaas_tune.grid([task], seeds=list(range(42, 42 + n)), backend=settings, baseline=False, **tune)
            start = time.perf_counter()
            table = lmaas_tune.sweep(specs, work / f"remote{n}", cpus_per_trial=0.25)
            wall = time.perf_counter() - start
            assert all(t.status == "finished" for t in table.trials), table.trials
            calls = sum(t.calls for t in table.trials)
            runs[n] = {"calls": calls, "wall_s": round(wall, 1), "calls_per_s": round(calls / wall, 2)}
        return {"server_model": model, "budget": budget, "one_trial": runs[1], "eight_trials": runs[8],
                "aggregate_ratio": round(runs[8]["calls_per_s"] / runs[1]["calls_per_s"], 2)}
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", type=int, choices=(1, 2), help="run only this measurement")
    parser.add_argument("--model", default="smollm2-135m", help="local model of measurement 1")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--budget", type=int, default=60, help="calls per trial")
    parser.add_argument("--server-model", default="smollm2-135m", help="the model `lmaas-tune serve` loads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in (None, 1):
            (Path(tmp) / "1").mkdir()
            out["sequential_vs_sweep"] = sequential_vs_sweep(args.model, args.trials, args.budget, Path(tmp) / "1")
        if args.part in (None, 2):
            (Path(tmp) / "2").mkdir()
            out["eight_trials_one_service"] = against_one_service(args.server_model, args.budget, Path(tmp) / "2")
    if args.json:
        print(json.dumps(out, indent=2))
        return
    if "sequential_vs_sweep" in out:
        r = out["sequential_vs_sweep"]
        print(f"{r['trials']} trials of {r['budget']} calls ({r['model']}): sequential {r['sequential_s']} s, "
              f"sweep with 2 workers {r['sweep_2_workers_s']} s: {r['speedup']}x")
    if "eight_trials_one_service" in out:
        r = out["eight_trials_one_service"]
        print(f"one `lmaas-tune serve` ({r['server_model']}): 1 trial {r['one_trial']['calls_per_s']} calls/s, "
              f"8 trials {r['eight_trials']['calls_per_s']} calls/s aggregate: {r['aggregate_ratio']}x")


if __name__ == "__main__":
    main()
