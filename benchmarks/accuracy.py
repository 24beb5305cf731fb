"""SST-2 accuracy of the manual prompt and of BBT with the same template, over seeds.

Test set: all 872 SST-2 validation examples. For each template: the manual prompt (no soft prompt;
deterministic, so its std is 0) and BBT runs with the given seeds (the seed draws the few-shot
split, the projection and CMA-ES). Templates and settings were chosen on a dev sample from the
train pool (benchmarks/templates.py) and the CPU preset, never on the test set.

Results are appended to ``--out`` as they finish; a rerun skips what is already there. A variant
names the precision, budget, p0, the thread count, whether the fused Llama path scored the text
rows (``--fused``, lmaas_tune/backends/fused_llama.py) and whether the model's layers ran compiled
(``--compile``): in bfloat16 the rounding of a matrix product depends on
how the threads split it and on where a pass rounds, and a CMA-ES run amplifies that, so runs differ
by thread count and by path.

    python benchmarks/accuracy.py --seeds 42 43 44
    python benchmarks/accuracy.py --seeds 42 43 44 --compile    # the same with torch.compile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmaas_tune.backends import LocalBackend
from lmaas_tune.methods import PRESETS
from lmaas_tune.tuning.evaluation import evaluate_prompt
from lmaas_tune.tasks import get_task
from lmaas_tune.tuning.tuner import BlackBoxTuner

#: the initial prompt p0 (``--prompt-init``), chosen on the same train-pool dev sample as the templates
#: (benchmarks/templates.py --init): the instruction a zero-shot reader would be given
INIT = "Is the following movie review positive or negative?\n"

TEMPLATES = {
    "paper": ("{sentence} . It was {mask}", "bad,great"),
    "review": ("Review: {sentence}\nSentiment:{mask}", "negative,positive"),
}


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def _save(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")


def table(rows: list[dict], templates: list[str]) -> str:
    lines = ["| template | label words | manual prompt | BBT (mean ± std) | BBT runs | BBT − manual | s per BBT run |",
             "|---|---|---|---|---|---|---|"]
    for name in templates:
        manual = [r["accuracy"] for r in rows if r["template"] == name and r["method"] == "manual"]
        bbt = [r for r in rows if r["template"] == name and r["method"] == "bbt"]
        accs = [r["accuracy"] for r in bbt]
        if not manual:
            continue
        m = 100 * manual[0]
        if accs:
            mean = 100 * statistics.mean(accs)
            std = 100 * statistics.stdev(accs) if len(accs) > 1 else 0.0
            runs = ", ".join(f"{100 * a:.2f}" for a in accs)
            secs = statistics.mean(r["wall_time_s"] for r in bbt)
            lines.append(f"| `{TEMPLATES[name][0]!r}` | {TEMPLATES[name][1]} | {m:.2f} ± 0.00 | {mean:.2f} ± {std:.2f} | {runs} | {mean - m:+.2f} | {secs:.0f} |")
        else:
            lines.append(f"| `{TEMPLATES[name][0]!r}` | {TEMPLATES[name][1]} | {m:.2f} ± 0.00 | - | - | - | - |")
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--templates", nargs="+", default=list(TEMPLATES), choices=list(TEMPLATES))
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--budget", type=int)
    ap.add_argument("--prompt-init", default=INIT, help="BBT's initial prompt text; '' for zeros (the paper's)")
    ap.add_argument("--fused", action="store_true", help="score the text rows with the fused Llama layers")
    ap.add_argument("--compile", action="store_true", help="compile the model's layers (torch.compile)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PRESETS.get(args.preset).config.with_overrides(budget=args.budget, prompt_init=args.prompt_init)
    rows = _load(args.out)
    base = get_task("sst2")
    async with LocalBackend.load(args.model, dtype=args.dtype, fused=args.fused, compile=args.compile) as backend:
        # rows of other variants are kept, not mixed; the variant names the precision actually used
        variant = (f"{args.preset}-b{config.budget}-{backend.info.dtype}" + ("-init" if config.prompt_init else "")
                   + f"-t{torch.get_num_threads()}" + ("-fused" if backend.fused else "")
                   + ("-compiled" if backend.compiled else ""))
        done = {(r["template"], r["method"], r.get("seed")) for r in rows if r["variant"] == variant}
        print(f"settings: {config.to_dict()} model={args.model} dtype={backend.info.dtype}", flush=True)
        test = base.load("test")
        for name in args.templates:
            task = base.with_format(*TEMPLATES[name])
            if (name, "manual", None) not in done:
                ev = await evaluate_prompt(backend, task, test)
                rows.append({"template": name, "method": "manual", "seed": None, "accuracy": ev.accuracy, "n": ev.n,
                             "variant": variant})
                _save(args.out, rows)
                print(f"{name} manual: {ev.accuracy:.4f} on {ev.n}", flush=True)
            for seed in args.seeds:
                if (name, "bbt", seed) in done:
                    continue
                cfg = config.with_overrides(seed=seed)
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    result = await BlackBoxTuner(task, backend, cfg, run_dir=Path(tmp) / "run").fit()
                    wall = time.perf_counter() - start
                assert result.test is not None
                rows.append({"template": name, "method": "bbt", "seed": seed, "accuracy": result.test.accuracy,
                             "n": result.test.n, "dev": result.dev, "calls": result.calls, "wall_time_s": wall,
                             "config": cfg.to_dict(), "dtype": backend.info.dtype, "variant": variant})
                _save(args.out, rows)
                print(f"{name} bbt seed {seed}: test {result.test.accuracy:.4f} dev {result.dev:.4f} "
                      f"({result.calls} calls, {wall:.0f} s)", flush=True)
    print()
    print(f"variant {variant} ({backend.info.dtype}, {torch.get_num_threads()} threads, {config.budget} calls, L={config.prompt_length}, "
          f"{config.k_shot}-shot, p0 {config.prompt_init or 'zeros'!r}; test = 872 SST-2 validation sentences)")
    print(table([r for r in rows if r["variant"] == variant], args.templates))


if __name__ == "__main__":
    asyncio.run(main())
