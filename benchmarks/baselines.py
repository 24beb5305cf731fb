"""What black-box tuning buys a user, against the baselines they would try first.

For each task and seed, on the same few-shot split (``--k-shot`` train and as many dev examples per
class, drawn by the seed) and the full test set:

* ``manual``: the task's template alone (zero-shot; no seed dependence);
* ``icl``: in-context learning: the train examples, rendered with their gold label words, as
  demonstrations before the template (shuffled by the seed; the local backend runs that shared
  text once per pass);
* ``bbt@N``: BBT (CPU preset otherwise, p0 = the task's instruction) with a budget of N calls,
  for each N of ``--budgets``: the accuracy-versus-budget curve;
* ``gpt``: gradient prompt tuning of the same soft prompt (same L and p0): Adam on the train
  set's cross-entropy through the model in float32, the prompt with the best dev accuracy kept.
  The white-box reference for what this prompt could reach with gradients; a benchmark only.
* ``--bbt-methods``: BBT rows for other method presets (``lmaas_tune.methods.METHOD_PRESETS``,
  e.g. ``bbt-cobyla``) at each budget;
* ``--variants``: the manual and BBT rows (those in ``--methods``) again with the label words read another way: a
  registered verbalizer (``multi``: several words per label), ``cal`` (calibration on content-free
  inputs), or both (``multi+cal``).

A budget curve of a CMA-ES method comes from one run per seed at the largest budget: CMA-ES does
not look at the budget, so the prompt the dev set picked after N calls is the one a run with
budget N returns.

Each row records the test accuracy, the calls it spent tuning (candidates scored for BBT; train
passes, forward and backward, for ``gpt``; none for ``manual`` and ``icl``) and the wall time.
Rows are appended to ``--out`` as they finish and a rerun skips what is there; the table is
mean ± std over the seeds, and ``--plot`` draws the budget curve.

    python benchmarks/baselines.py --tasks sst2 agnews --seeds 42 43 44 --budgets 400 1000 2000 8000
    python benchmarks/baselines.py --table-only --plot benchmarks/results/baselines-budget.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lmaas_tune.backends import LocalBackend, ModelKind
from lmaas_tune.methods import PRESETS, tune_config
from lmaas_tune.methods.bbt import text_prompt
from lmaas_tune.tasks import get_task
from lmaas_tune.tasks.task import Task
from lmaas_tune.tuning.evaluation import evaluate_prompt
from lmaas_tune.tuning.events import GenerationReport
from lmaas_tune.tuning.fewshot import FewShotSplit
from lmaas_tune.tuning.tuner import BlackBoxTuner

#: p0 per task: the instruction a zero-shot reader would be given (the demo's, for SST-2)
INIT = {
    "sst2": "Is the following movie review positive or negative?\n",
    "agnews": "What is the topic of the following news article?\n",
    "rte": "Does the first sentence entail the second?\n",
}


def _load(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def _save(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")


# -- in-context learning ------------------------------------------------------------------------------


def icl_task(task: Task, demos: list[Any], kind: ModelKind) -> Task:
    """``task`` with ``demos`` (examples with gold labels) written before its template."""
    fmt = task.format_for(kind)
    words = fmt.verbalizer.names  # each label's first word
    text = fmt.template.text
    parts = []
    for ex in demos:
        filled = text.replace("{mask}", "{_label}").format(**ex.texts, _label=" " + words[ex.label])
        parts.append(filled.replace("{", "{{").replace("}", "}}"))
    return task.with_format(template="\n\n".join(parts) + "\n\n" + text)


def settings(pairs: list[str]) -> dict[str, Any]:
    """``["sigma0=0.3"]`` -> ``{"sigma0": 0.3}`` (values read as JSON where they parse, else text)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def read_as(task: Task, variant: str | None) -> Task:
    """``task`` read as ``variant`` says: ``multi`` (a registered verbalizer), ``cal`` (calibrated),
    ``multi+cal`` (both), or ``None`` (as registered)."""
    for part in (variant or "").split("+"):
        if part == "cal":
            task = task.with_calibration()
        elif part:
            task = task.with_verbalizer(part)
    return task


# -- gradient prompt tuning ------------------------------------------------------------------------


def _label_logits(model: Any, backend: LocalBackend, enc: Any, prompt: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` label-word logits of each query with ``prompt`` placed as the backend places it."""
    emb = model.get_input_embeddings()
    L = prompt.shape[0]
    rows, lengths = [], []
    for ids in enc.ids:
        t = emb(torch.tensor(ids))
        rows.append(torch.cat([t[: enc.insert_at], prompt, t[enc.insert_at:]], dim=0))
        lengths.append(len(ids) + L)
    width = max(lengths)
    x = torch.zeros(len(rows), width, prompt.shape[1])
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
        mask[i, : len(r)] = 1
    hidden = model.base_model(inputs_embeds=x, attention_mask=mask).last_hidden_state
    pos = torch.as_tensor(enc.readout) + L
    h = hidden[torch.arange(len(rows)), pos]
    return model.get_output_embeddings()(h)[:, list(enc.label_ids)]


def gradient_prompt_tuning(ref: LocalBackend, task: Task, split: FewShotSplit, p0: np.ndarray, *, steps: int,
                           lr: float, eval_every: int, seed: int) -> tuple[np.ndarray, float, int]:
    """Adam on the soft prompt (float32 model ``ref``); returns (dev-best prompt, its dev accuracy, steps)."""
    torch.manual_seed(seed)
    model = ref.model
    for p in model.parameters():
        p.requires_grad_(False)
    kind = ref.info.kind
    train, dev = ref.encode(task.render(split.train, kind)), ref.encode(task.render(split.dev, kind))
    y_train = torch.tensor([e.label for e in split.train])
    y_dev = np.array([e.label for e in split.dev])
    prompt = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
    opt = torch.optim.Adam([prompt], lr=lr)
    sizes = [len(words) for words in task.format_for(kind).verbalizer.classes]
    ends = np.cumsum(sizes)

    def classes(words: torch.Tensor) -> torch.Tensor:  # as Verbalizer.aggregate: log-sum-exp of each label's words
        return torch.stack([torch.logsumexp(words[:, e - n:e], dim=1) for n, e in zip(sizes, ends)], dim=1)

    best, best_dev = p0.copy(), -1.0
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(classes(_label_logits(model, ref, train, prompt)), y_train)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                acc = float((classes(_label_logits(model, ref, dev, prompt)).argmax(-1).numpy() == y_dev).mean())
            if acc > best_dev:
                best, best_dev = prompt.detach().numpy().copy(), acc
    return best, best_dev, steps


# -- the table and the curve ----------------------------------------------------------------------


def _stats(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def _order(key: tuple[str, str]) -> tuple[int, str, int]:
    """manual rows, then icl, then BBT's, then gpt; by name within each, a name's budgets in order."""
    method = key[1]
    rank = next((i for i, p in enumerate(("manual", "icl", "bbt", "gpt")) if method.startswith(p)), 4)
    name, _, budget = method.partition("@")
    return rank, name, int(budget or 0)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | method | test accuracy (mean ± std) | seeds | tuning calls | wall time (s, mean) |",
             "|---|---|---|---|---|---|"]
    keys: list[tuple[str, str]] = []
    for r in rows:
        if (r["task"], r["method"]) not in keys:
            keys.append((r["task"], r["method"]))
    tasks = list(dict.fromkeys(t for t, _ in keys))
    for task, method in sorted(keys, key=lambda k: (tasks.index(k[0]), *_order(k))):
        sel = [r for r in rows if (r["task"], r["method"]) == (task, method)]
        lines.append(f"| {task} | {method} | {_stats([r['accuracy'] for r in sel])} | {len(sel)} | "
                     f"{sel[0]['calls']} | {statistics.mean(r['wall_time_s'] for r in sel):.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against calls per task: each seed's budget curve (thin), the mean ± std over seeds at
    each budget, the other tuned rows as points, the zero-call baselines and gpt as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sel = [r for r in rows if r["task"] == task]
        curves: dict[str, dict[int, dict[Any, float]]] = {}
        for r in sel:
            if "@" in r["method"]:
                name, budget = r["method"].split("@")
                curves.setdefault(name, {}).setdefault(int(budget), {})[r["seed"]] = 100 * r["accuracy"]
        for i, (name, by_budget) in enumerate(curves.items()):
            color, nudge = f"C{i}", 1.04 ** (i - (len(curves) - 1) / 2)  # side by side at a shared budget
            budgets = sorted(by_budget)
            for seed in sorted({s for acc in by_budget.values() for s in acc}, key=str):
                xs = [b for b in budgets if seed in by_budget[b]]
                if len(xs) > 1:
                    ax.plot(xs, [by_budget[b][seed] for b in xs], color=color, alpha=0.35, linewidth=1)
            mean = [statistics.mean(by_budget[b].values()) for b in budgets]
            std = [statistics.stdev(by_budget[b].values()) if len(by_budget[b]) > 1 else 0.0 for b in budgets]
            seeds = sorted({len(by_budget[b]) for b in budgets})
            ax.errorbar([b * nudge for b in budgets], mean, yerr=std, marker="o", capsize=3, color=color, linestyle="none",
                        label=f"{name} ({'/'.join(map(str, seeds))} seeds)")
        lines = {"manual": ("--", "gray"), "manual+cal": ("-.", "gray"), "icl": (":", "gray"), "gpt": ("-", "black")}
        for method, (style, color) in lines.items():
            accs = [100 * r["accuracy"] for r in sel if r["method"] == method]
            if not accs:
                continue
            ax.axhline(statistics.mean(accs), linestyle=style, color=color, linewidth=1,
                       label=f"{method} ({len(accs)} seed{'s' if len(accs) > 1 else ''})" if method in ("icl", "gpt")
                       else method)
        budgets_all = sorted({b for by_budget in curves.values() for b in by_budget})
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(budgets_all))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(b) for b in budgets_all])
        ax.set_xlim(min(budgets_all, default=100) * 0.8, max(budgets_all, default=1000) * 1.25)
        ax.set_xlabel("calls (candidates scored)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{task}: mean ± std over seeds; thin lines: each seed's curve", fontsize=10)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


async def bbt_rows(backend: LocalBackend, task: Task, test: list[Any], cfg: Any, budgets: list[int],
                   emit: Callable[..., None]) -> None:
    """Tune once with ``cfg`` (its budget the largest of ``budgets``) and test the dev-selected prompt
    as it stood after each of ``budgets`` calls; ``emit`` one row per budget. A row's wall time is
    the tuning time up to its budget plus its own test scoring."""
    marks: dict[int, tuple[np.ndarray, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"

        def snapshot(event: Any) -> None:
            if isinstance(event, GenerationReport) and event.calls in budgets and event.best_dev is not None:
                marks[event.calls] = (np.load(run_dir / "best_prompt.npy"), event.best_dev, event.elapsed)

        result = await BlackBoxTuner(task, backend, cfg, run_dir=run_dir, evaluate_test=False,
                                     callbacks=[snapshot]).fit()
    for budget in sorted(budgets):
        prompt, dev, tuned_s = marks[budget] if budget in marks else (result.prompt(), result.dev, result.wall_time)
        start = time.perf_counter()
        ev = await evaluate_prompt(backend, task, test, prompt=prompt)
        emit(budget, ev.accuracy, ev.n, min(budget, result.calls), tuned_s + time.perf_counter() - start, dev=dev,
             config=cfg.with_overrides(budget=budget).to_dict())


# -- running -------------------------------------------------------------------------------------------


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto", help="the backend's precision for every row but gpt's training")
    ap.add_argument("--tasks", nargs="+", default=["sst2", "agnews"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--methods", nargs="+", default=["manual", "icl", "bbt", "gpt"],
                    choices=["manual", "icl", "bbt", "gpt"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[400, 1000, 2000, 8000])
    ap.add_argument("--bbt-methods", nargs="*", default=[], help="other method presets (e.g. bbt-cobyla), run like bbt")
    ap.add_argument("--variants", nargs="*", default=[],
                    help="ways of reading the label words, each a registered verbalizer name (e.g. multi), cal "
                         "(calibration on content-free inputs), or both joined by + (multi+cal): manual and bbt "
                         "again with each, rows named manual+VARIANT and bbt+VARIANT@budget")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="tuning settings over the CPU preset and the method's for every BBT row (e.g. sigma0=0.3); "
                         "the rows' names say them")
    ap.add_argument("--k-shot", type=int, default=16)
    ap.add_argument("--gpt-steps", type=int, default=100)
    ap.add_argument("--gpt-lr", type=float, default=3e-3)
    ap.add_argument("--test-limit", type=int, help="score only the first N test examples (smoke runs)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/baselines.json"))
    ap.add_argument("--plot", type=Path, help="write the budget curve here (PNG)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    rows = _load(args.out)
    if not args.table_only:
        await run(args, rows)
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"budget curve: {args.plot}")


async def run(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    base = PRESETS.get("cpu").config
    async with LocalBackend.load(args.model, dtype=args.dtype) as backend:
        variant = f"{backend.info.dtype}-t{torch.get_num_threads()}-k{args.k_shot}" + (
            f"-test{args.test_limit}" if args.test_limit else "")
        done = {(r["task"], r["method"], r["seed"]) for r in rows if r["variant"] == variant}
        kind = backend.info.kind
        ref = LocalBackend.load(args.model, dtype="float32") if "gpt" in args.methods else None

        def record(task: str, method: str, seed: int | None, accuracy: float, n: int, calls: int, wall: float,
                   **extra: Any) -> None:
            rows.append({"task": task, "method": method, "seed": seed, "accuracy": accuracy, "n": n, "calls": calls,
                         "wall_time_s": round(wall, 1), "variant": variant, "dtype": backend.info.dtype, **extra})
            _save(args.out, rows)
            print(f"{task} {method} seed {seed}: {accuracy:.4f} on {n} ({calls} calls, {wall:.0f} s)", flush=True)

        for name in args.tasks:
            task = get_task(name)
            test = task.load("test")[: args.test_limit] if args.test_limit else task.load("test")
            init = INIT.get(name, "")
            for reading in [None, *args.variants]:
                label = "manual" + (f"+{reading}" if reading else "")
                if "manual" in args.methods and (name, label, None) not in done:
                    start = time.perf_counter()
                    ev = await evaluate_prompt(backend, read_as(task, reading), test)
                    record(name, label, None, ev.accuracy, ev.n, 0, time.perf_counter() - start)
            for seed in args.seeds:
                split = FewShotSplit.draw(task.load("train"), args.k_shot, seed, task.num_labels)
                if "icl" in args.methods and (name, "icl", seed) not in done:
                    demos = list(split.train)
                    random.Random(seed).shuffle(demos)
                    start = time.perf_counter()
                    longest = [max(test, key=lambda e: sum(len(t) for t in e.texts.values()))]
                    while len(demos) > 1 and (await backend.token_lengths(
                            icl_task(task, demos, kind).render(longest, kind)))[0] > backend.info.max_length:
                        demos.pop()  # as many demonstrations as fit the context beside the longest test input
                    ev = await evaluate_prompt(backend, icl_task(task, demos, kind), test)
                    record(name, "icl", seed, ev.accuracy, ev.n, 0, time.perf_counter() - start, demos=len(demos))
                runs = [(m, None) for m in (["bbt"] if "bbt" in args.methods else []) + list(args.bbt_methods)]
                runs += [("bbt", v) for v in args.variants if "bbt" in args.methods]
                for method, reading in runs:
                    tuned = read_as(task, reading)
                    base_label = f"{method}{'+' + reading if reading else ''}" + "".join(f"[{kv}]" for kv in args.set)
                    todo = [b for b in args.budgets if (name, f"{base_label}@{b}", seed) not in done]
                    if not todo:
                        continue
                    cfg0 = tune_config("cpu", method, seed=seed, k_shot=args.k_shot,
                                       prompt_init=init if method != "bbtv2" else "", **settings(args.set))
                    # CMA-ES does not look at the budget, so a run's first N calls are those of a run with budget
                    # N: one run at the largest budget gives every point of the curve (the dev-selected prompt
                    # after N calls). A two-stage optimiser splits its budget, so it runs once per budget.
                    groups = [todo] if cfg0.optimizer == "cma-es" else [[b] for b in todo]
                    for budgets in groups:
                        await bbt_rows(backend, tuned, test, cfg0.with_overrides(budget=max(budgets)), budgets,
                                       lambda b, acc, n, calls, wall, **kw: record(
                                           name, f"{base_label}@{b}", seed, acc, n, calls, wall, **kw))
                if "gpt" in args.methods and (name, "gpt", seed) not in done:
                    assert ref is not None
                    rows_p0 = await ref.embed_text(init) if init else None
                    L = base.prompt_length
                    p0 = text_prompt(rows_p0, L, init) if rows_p0 is not None else np.zeros((L, ref.info.hidden_size),
                                                                                           np.float32)
                    start = time.perf_counter()
                    prompt, dev, steps = await asyncio.to_thread(
                        gradient_prompt_tuning, ref, task, split, p0, steps=args.gpt_steps, lr=args.gpt_lr,
                        eval_every=max(1, args.gpt_steps // 10), seed=seed)
                    ev = await evaluate_prompt(backend, task, test, prompt=prompt)
                    record(name, "gpt", seed, ev.accuracy, ev.n, steps, time.perf_counter() - start, dev=dev,
                           lr=args.gpt_lr)
        if ref is not None:
            await ref.aclose()


if __name__ == "__main__":
    asyncio.run(main())
