"""Zero-shot accuracy of candidate SST-2 templates on a dev sample drawn from the *train* pool.

Used to choose the templates that benchmarks/accuracy.py tunes; never looks at the test set.
The sample: ``--n`` examples of at least ``--min-words`` words (SST-2's train pool mixes phrases
with sentences; its test set is sentences), drawn with ``--seed``, disjoint from nothing else.

    python benchmarks/templates.py --n 400
    python benchmarks/templates.py --n 400 --init    # initial prompts p0 for BBT, on the task's template

With ``--init`` it scores, on the same sample and the task's registered template, the prompt BBT
starts from (z = 0, so p = p0) for each candidate p0 of ``--prompt-length`` tokens: zeros (the
paper's) and the token embeddings of each text in INITS, repeated to the prompt length.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from lmaas_tune.backends import Backend, LocalBackend
from lmaas_tune.tuning.evaluation import evaluate_prompt
from lmaas_tune.methods import text_prompt
from lmaas_tune.tasks import Example, Task, get_task

CANDIDATES = [
    ("{sentence} . It was {mask}", "bad,great"),
    ("Review: {sentence}\nSentiment:{mask}", "negative,positive"),
    ("Review: {sentence}\nSentiment:{mask}", "bad,good"),
    ("Movie review: {sentence}\nThe movie was{mask}", "terrible,great"),
    ("{sentence}\nIs this movie review positive or negative?\nAnswer:{mask}", "negative,positive"),
    ("Movie review: {sentence}\nSentiment (positive or negative):{mask}", "negative,positive"),
]

INITS = [
    "Is the following movie review positive or negative?\n",
    "Classify the following text.\n",
    "Read the text below and answer the question.\n",
    "\n",
    ".",
]


async def initial_prompts(backend: Backend, task: Task, sample: list[Example], length: int) -> None:
    ev = await evaluate_prompt(backend, task, sample)
    print(f"{ev.accuracy:.4f}  no soft prompt (the manual prompt)", flush=True)
    zeros = np.zeros((length, backend.info.hidden_size), np.float32)
    ev = await evaluate_prompt(backend, task, sample, zeros)
    print(f"{ev.accuracy:.4f}  p0 = zeros ({length} tokens)", flush=True)
    for text in INITS:
        p0 = text_prompt(await backend.embed_text(text), length, text)
        ev = await evaluate_prompt(backend, task, sample, p0)
        print(f"{ev.accuracy:.4f}  p0 = {text!r} repeated to {length} tokens", flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--min-words", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", action="store_true", help="score initial prompts p0 instead of templates")
    ap.add_argument("--prompt-length", type=int, default=10)
    args = ap.parse_args()
    base = get_task("sst2")
    pool = [e for e in base.load("train") if len(e.texts["sentence"].split()) >= args.min_words]
    pick = np.random.default_rng(args.seed).choice(len(pool), size=args.n, replace=False)
    sample = [pool[int(i)] for i in pick]
    async with LocalBackend.load(args.model) as backend:
        print(f"dev sample: {args.n} train-pool examples with >= {args.min_words} words, seed {args.seed}")
        if args.init:
            return await initial_prompts(backend, base, sample, args.prompt_length)
        for template, words in CANDIDATES:
            task = base.with_format(template, words)
            t = time.perf_counter()
            ev = await evaluate_prompt(backend, task, sample)
            print(f"{ev.accuracy:.4f}  {words:<20} {template!r}  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
