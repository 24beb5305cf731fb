"""Tune a soft prompt for SST-2 on a model served by vLLM, from Python.

The server runs the model; this process holds only its tokenizer and input embedding table,
builds every input as embeddings (soft prompt included) and reads back the label words'
log-probabilities. The server must have loaded the model given as ``--model`` and been started
with ``--enable-prompt-embeds`` (``bash scripts/vllm_server.sh start`` does both for the
embedded model, on http://127.0.0.1:8765).

    bash scripts/vllm_server.sh start
    python examples/vllm_fit.py                                  # 40 calls against http://127.0.0.1:8765
    LMAAS_TUNE_TOKEN=KEY python examples/vllm_fit.py http://gpu-box:8000 --model ./model-dir --budget 400
    python examples/vllm_fit.py --task-file examples/custom_task.toml  # your own task instead of SST-2

The URL comes from the command line, else ``$LMAAS_TUNE_VLLM_URL``; the server's API key, if it
requires one, from ``$LMAAS_TUNE_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from lmaas_tune import PRESETS, BlackBoxTuner, TaskSpec, VllmBackend, get_task
from lmaas_tune.tuning.events import GenerationReport


def show(event: object) -> None:
    if isinstance(event, GenerationReport):
        print(f"calls {event.calls}/{event.budget}  best train loss {event.best_loss:.4f}  "
              f"{event.calls_per_s:.2f} calls/s", flush=True)


async def main(url: str, model: str, served_model: str | None, budget: int, task_file: str | None) -> None:
    token = os.environ.get("LMAAS_TUNE_TOKEN")  # None: the server requires no key
    task = TaskSpec.from_file(task_file).build() if task_file else get_task("sst2")
    config = PRESETS.get("cpu").config.with_overrides(budget=budget)
    async with VllmBackend([url], model, served_model=served_model, token=token) as backend:
        print(f"{url} serves {backend.info.extra['served_model']}; tuning {task.name} through it "
              f"({budget} calls, L={config.prompt_length})", flush=True)
        result = await BlackBoxTuner(task, backend, config, callbacks=[show], evaluate_manual=True).fit()
    assert result.test is not None and result.manual is not None
    print(f"tuned prompt: test accuracy {result.test.accuracy:.4f} on {result.test.n} {task.name} examples "
          f"(manual prompt {result.manual.accuracy:.4f})")
    ledger = result.ledger
    print(f"{ledger['calls']} calls in {ledger['attempts']} requests ({ledger['retries']} retried), "
          f"{ledger['bytes_up'] / 1e6:.1f} MB sent, {result.wall_time:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", nargs="?", default=os.environ.get("LMAAS_TUNE_VLLM_URL", "http://127.0.0.1:8765"),
                    help="the vLLM server (default: $LMAAS_TUNE_VLLM_URL, else http://127.0.0.1:8765)")
    ap.add_argument("--model", default="smollm2-135m", help="the model the server loaded: embedded name or directory")
    ap.add_argument("--served-model", help="its name on the server (default: the one model the server lists)")
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--task-file", help="a task in .toml or .json (as `lmaas-tune fit --task-file`); default SST-2")
    args = ap.parse_args()
    asyncio.run(main(args.url, args.model, args.served_model, args.budget, args.task_file))
