"""Tune a soft prompt for SST-2 on the embedded model from Python, then reuse it.

    python examples/tune_sst2.py --budget 100
    python examples/tune_sst2.py --model ./some-model-dir --budget 40
"""

from __future__ import annotations

import argparse
import asyncio

from lmaas_tune.backends import LocalBackend
from lmaas_tune.methods import PRESETS
from lmaas_tune.tuning.evaluation import evaluate_prompt
from lmaas_tune.tasks import get_task
from lmaas_tune.tuning.tuner import BlackBoxTuner, GenerationReport


def show(event: object) -> None:
    if isinstance(event, GenerationReport):
        print(f"calls {event.calls}/{event.budget}  best train loss {event.best_loss:.4f}  best dev {event.best_dev}")


async def main(budget: int, output: str | None, model: str) -> None:
    task = get_task("sst2")
    config = PRESETS.get("cpu").config.with_overrides(budget=budget)
    async with LocalBackend.load(model) as backend:  # by default the embedded SmolLM2-135M, offline
        result = await BlackBoxTuner(task, backend, config, run_dir=output, callbacks=[show]).fit()
        assert result.test is not None
        print(f"tuned prompt: test accuracy {result.test.accuracy:.4f} on {result.test.n} SST-2 sentences")
        manual = await evaluate_prompt(backend, task, task.load("test"))
        print(f"manual prompt: test accuracy {manual.accuracy:.4f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--output", default=None, help="run directory to write (optional)")
    ap.add_argument("--model", default="smollm2-135m", help="embedded name, .gguf file or model directory")
    args = ap.parse_args()
    asyncio.run(main(args.budget, args.output, args.model))
