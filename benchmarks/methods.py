"""BBTv2 (deep BBT) against BBT on SST-2 and RTE, over seeds, at the same budget.

Each (task, method, seed) run tunes on the seed's few-shot split (16 per class train, 16 dev) with
the size preset (default ``cpu``: L=10) and the method preset (``bbt``: the paper's BBT;
``bbtv2``: sigma 0.2, alpha 0.2, a prompt and a CMA-ES per layer), both at ``--budget`` calls,
then scores its best prompt on the test set: the shipped GLUE validation sets (SST-2: 872
sentences; RTE: 277 pairs), or their first ``--limit-test`` examples. The manual prompt is scored
once per task for reference.

Results are appended to ``--out`` as they finish; a rerun skips what is already there (for the
same model, budget, preset and test limit). Mind the schedule: BBTv2 gives each layer one
generation per round, so with the embedded model (30 layers) and popsize 20 a round is 600 calls.

    python benchmarks/methods.py                       # 3 seeds, SST-2 and RTE, 400 calls each
    python benchmarks/methods.py --budget 1200 --seeds 42 43 44 --tasks sst2 rte
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from lmaas_tune.backends import LocalBackend
from lmaas_tune.methods import tune_config
from lmaas_tune.tuning.evaluation import evaluate_prompt
from lmaas_tune.tasks import get_task
from lmaas_tune.tuning.tuner import BlackBoxTuner


def _load(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def _save(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def table(rows: list[dict[str, Any]], tasks: list[str], methods: list[str]) -> str:
    lines = ["| task | manual prompt | " + " | ".join(f"{m} (mean ± std)" for m in methods) + " | runs | s per run |",
             "|---|---|" + "---|" * len(methods) + "---|---|"]
    for task in tasks:
        manual = [r["accuracy"] for r in rows if r["task"] == task and r["method"] == "manual"]
        cells, runs, secs = [], [], []
        for m in methods:
            mine = [r for r in rows if r["task"] == task and r["method"] == m]
            cells.append(_mean_std([r["accuracy"] for r in mine]))
            runs.append(f"{m}: " + ", ".join(f"{100 * r['accuracy']:.2f}" for r in mine))
            secs.append(f"{m}: {statistics.mean(r['wall_time_s'] for r in mine):.0f}" if mine else f"{m}: -")
        man = f"{100 * manual[0]:.2f}" if manual else "-"
        lines.append(f"| {task} | {man} | " + " | ".join(cells) + f" | {'; '.join(runs)} | {'; '.join(secs)} |")
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    ap.add_argument("--methods", nargs="+", default=["bbt", "bbtv2"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--preset", default="cpu", help="size preset (prompt length and default budget)")
    ap.add_argument("--budget", type=int, default=400, help="calls per run, the same for every method")
    ap.add_argument("--popsize", type=int, help="override the popsize (both methods)")
    ap.add_argument("--prompt-length", type=int, help="override the prompt length (both methods)")
    ap.add_argument("--intrinsic-dim", type=int, help="override d (both methods)")
    ap.add_argument("--k-shot", type=int, help="override the shots per class (both methods)")
    ap.add_argument("--limit-test", type=int, help="score only the first N test examples")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/methods.json"))
    args = ap.parse_args()

    overrides = {"budget": args.budget, "popsize": args.popsize, "prompt_length": args.prompt_length,
                 "intrinsic_dim": args.intrinsic_dim, "k_shot": args.k_shot}
    configs = {m: tune_config(args.preset, m, **overrides) for m in args.methods}
    rows = _load(args.out)
    for m, cfg in configs.items():
        print(f"{m}: {cfg.to_dict()}", flush=True)
    async with LocalBackend.load(args.model, device=args.device, dtype=args.dtype) as backend:
        info = backend.info
        # the variant names the precision actually used ("auto" resolves per machine)
        variant = f"{args.model}-{args.preset}-b{args.budget}-t{args.limit_test or 'all'}-{info.dtype}"
        for key, value in overrides.items():
            if key != "budget" and value is not None:
                variant += f"-{key}{value}"
        done = {(r["task"], r["method"], r.get("seed")) for r in rows if r.get("variant") == variant}
        print(f"model {info.model_id}: {info.num_layers} layers, hidden {info.hidden_size}, {info.device}/{info.dtype}; "
              f"variant {variant}", flush=True)
        for name in args.tasks:
            task = get_task(name)
            test = task.load("test")[: args.limit_test] if args.limit_test else task.load("test")
            if (name, "manual", None) not in done:
                ev = await evaluate_prompt(backend, task, test)
                rows.append({"task": name, "method": "manual", "seed": None, "accuracy": ev.accuracy, "n": ev.n,
                             "variant": variant})
                _save(args.out, rows)
                print(f"{name} manual: {ev.accuracy:.4f} on {ev.n}", flush=True)
            for seed in args.seeds:
                for m, base in configs.items():
                    if (name, m, seed) in done:
                        continue
                    cfg = base.with_overrides(seed=seed)
                    start = time.perf_counter()
                    result = await BlackBoxTuner(task, backend, cfg, evaluate_test=False).fit()
                    tuned = time.perf_counter() - start
                    prompt = result.prompt()
                    ev = await evaluate_prompt(backend, task, test, prompt)
                    wall = time.perf_counter() - start
                    rows.append({"task": name, "method": m, "seed": seed, "accuracy": ev.accuracy, "n": ev.n,
                                 "dropped": ev.dropped, "dev": result.dev, "train_loss": result.train_loss,
                                 "calls": result.calls, "tuning_s": tuned, "wall_time_s": wall,
                                 "config": cfg.to_dict(), "dtype": info.dtype, "variant": variant})
                    _save(args.out, rows)
                    print(f"{name} {m} seed {seed}: test {ev.accuracy:.4f} (n={ev.n}) dev {result.dev:.4f} "
                          f"({result.calls} calls, {wall:.0f} s)", flush=True)
    here = [r for r in rows if r.get("variant") == variant]
    print()
    print(f"variant {variant}: {args.budget} calls per run, seeds {args.seeds}; accuracy % on the test set "
          f"({'first ' + str(args.limit_test) if args.limit_test else 'all'} examples; RTE test = GLUE validation)")
    print(table(here, args.tasks, args.methods))


if __name__ == "__main__":
    asyncio.run(main())
