"""Calls per second of BBT scoring: the reference-style baseline against lmaas-tune's path.

One "call" scores one candidate soft prompt on the whole few-shot train set (DESIGN §1). For each
workload (benchmarks/workloads.py) and each precision, in one process:

* ``baseline``: one candidate per forward pass, inputs right-padded to the longest of the set, the
  full model output (vocabulary-sized logits at every position), label words picked afterwards,
  the way the reference implementation scores;
* ``ours``: :class:`LocalBackend` as ``lmaas-tune fit`` runs it, a whole population per call:
  length-sorted rows under a token budget, label-only readout, and for causal LMs the soft prompt's
  keys/values computed once per candidate (``ours (whole rows)`` shows the same path without that),
  and ``ours + fused layers`` the same with the opt-in fused path for the text rows
  (lmaas_tune/backends/fused_llama.py; Llama-architecture models on a CPU);
* ``ours + torch.compile`` (with ``--compile``): ``ours`` on a copy of the model whose layers are
  compiled (``lmaas-tune fit --compile``); the compilation happens in an untimed warm-up call, whose
  length is printed. Its FLOPs are those of ``ours``: the same products on the same rows.

Each variant is timed ``--rounds`` times, interleaved with the others so that drifts in machine
speed hit all of them alike, and the median is reported. FLOPs are counted by
``torch.utils.flop_counter`` on one untimed call of each variant (what the matmuls and attention
actually execute, padding included), so ``GFLOP/s`` is the rate the hardware sustained.

The fraction of the matrix-product peak (for that precision, measured in the same run) is given two
ways, because this machine's speed swings by 2-3x (in bfloat16, AMX products run at ~2 TFLOP/s in
some spells and ~0.8 in others, spells lasting from a second to minutes):

* ``% peak`` pairs each timed call with the product rate measured right around it over a window of
  the same length: before the first timing and after every one, the product shape that was fastest
  in short windows at the start runs for as long as the timing before it took; each round's
  fraction is the variant's FLOP/s over the mean of its two neighbouring windows, and the median
  over rounds is printed. Both sides then average over the same kind of stretch of the machine's
  time.
* ``% best`` divides the variant's best round by the highest rate of the whole run, short windows
  (the best of all shapes, 0.15 s each, before the first round and after each) included: the
  strictest reading, the variant's best against the hardware's fastest burst.

Peak memory is the highest resident set size above the level before the variant ran (CPU; sampled
every 2 ms), or peak allocated device memory (CUDA). On the CPU it is measured after the timing,
with glibc told to return freed blocks at once (see :func:`freed_blocks_returned`): that setting
makes every large allocation a fresh mapping, page-faulted anew on each call, so no timed call
runs under it.

    python benchmarks/throughput.py                       # both workloads, fp32 and bf16
    python benchmarks/throughput.py --workloads embedded --dtypes bfloat16
    python benchmarks/throughput.py --workloads embedded --rounds 1 --profile   # + time per operator
    python benchmarks/throughput.py --workloads embedded --dtypes bfloat16 --compile \
        --out benchmarks/results/throughput-compile.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmaas_tune.backends.base import ModelKind
from lmaas_tune.backends.local.encoding import EncodedBatch, encode_batch, label_token_ids

from workloads import WORKLOADS, Workload, build

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- the machine --------------------------------------------------------------------------------


#: (m, k, n) of the products timed for the peak: square ones, and the shapes of the two models'
#: feed-forward layers at a pass of ~2048 tokens
PEAK_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (2048, 576, 1536), (2048, 1536, 576),
               (2048, 1024, 4096), (2048, 4096, 1024))

Shape = tuple[int, int, int]


def product_rate(shape: Shape, dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    """FLOP/s of one matrix product shape, repeated for ``seconds``."""
    m, k, n = shape
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        _sync(device)
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def product_rates(dtype: torch.dtype, device: torch.device, seconds: float = 0.7) -> dict[Shape, float]:
    """FLOP/s of each of :data:`PEAK_SHAPES`, each timed for ``seconds``."""
    return {shape: product_rate(shape, dtype, device, seconds) for shape in PEAK_SHAPES}


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 0.7) -> float:
    """Best FLOP/s over a set of matrix products (the fraction of it a model reaches is then a lower
    bound on how well it uses the hardware, not flattered by a slow reference product)."""
    return max(product_rates(dtype, device, seconds).values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


@contextmanager
def freed_blocks_returned() -> Iterator[Callable[[], None]]:
    """While the block runs, serve blocks above 64 KiB from their own mappings so that freeing one
    returns it to the system and the resident set follows what is held (glibc on Linux; a no-op
    elsewhere). Afterwards the thresholds are set to the upper bounds glibc's own adaptive ones
    climb to (32 MiB mmap, 64 MiB trim), the state a long-running process reaches anyway. Yields a
    function that hands free heap memory back, to call before each measurement."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        yield lambda: None
        return
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    try:
        yield lambda: libc.malloc_trim(0)  # give back what is free, so a start level is what is held
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, int]]:
    """Peak memory above the starting level while the block runs (bytes, in ``out["peak"]``)."""
    out = {"peak": 0}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield out
        out["peak"] = torch.cuda.max_memory_allocated(device) - start
        return
    if not os.path.exists("/proc/self/statm"):
        yield out
        return
    start, stop = _rss(), threading.Event()
    high = [start]

    def sample() -> None:
        while not stop.is_set():
            high[0] = max(high[0], _rss())
            stop.wait(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()
        out["peak"] = max(high[0], _rss()) - start


# -- the two ways of scoring -------------------------------------------------------------------


def baseline_call(w: Workload, enc: EncodedBatch, prompt: torch.Tensor) -> np.ndarray:
    """One candidate, the whole train set (tokenised once, outside the timing) in one right-padded
    pass, full vocabulary head."""
    model, tok, label_ids = w.model, w.tokenizer, enc.label_ids
    device = next(model.parameters()).device
    width = int(enc.lengths.max())
    ids = torch.full((len(enc.ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(enc.ids), width + len(prompt)), dtype=torch.long)
    for r, row in enumerate(enc.ids):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row) + len(prompt)] = 1
    emb = model.get_input_embeddings()(ids.to(device))
    s = enc.insert_at
    emb = torch.cat([emb[:, :s], prompt[None].expand(len(ids), -1, -1), emb[:, s:]], dim=1)
    kwargs = {"use_cache": False} if w.kind is ModelKind.CAUSAL else {}
    logits = model(inputs_embeds=emb, attention_mask=mask.to(device), **kwargs).logits
    rows = torch.arange(len(ids), device=device)
    picked = logits[rows, torch.as_tensor(enc.readout, device=device) + len(prompt)][:, list(label_ids)]
    return picked.float().cpu().numpy()


@dataclass
class Variant:
    name: str
    dtype: str
    calls: int  # calls one timed unit makes
    run: Callable[[], object]
    seconds: list[float]
    flops: float = 0.0
    peak_bytes: int = 0
    round_peaks: list[float] = field(default_factory=list)  # sustained product rate around each of ``seconds``
    run_peak: float = 0.0  # the highest product rate of the run, any window, for this precision
    same_work_as: str | None = None  # a variant running the same products, whose FLOP count this one takes

    @property
    def fractions(self) -> list[float]:
        """Each round's FLOP/s over the mean of the sustained product rates measured just before and just after it."""
        return [self.flops * self.calls / s / p for s, p in zip(self.seconds, self.round_peaks)]

    @property
    def fraction_of_peak(self) -> float:
        return statistics.median(self.fractions)

    @property
    def best_fraction(self) -> float:
        """Best round's FLOP/s over the highest product rate of the run (bursts included)."""
        return self.flops * self.calls / min(self.seconds) / self.run_peak

    @property
    def calls_per_s(self) -> float:
        return self.calls / statistics.median(self.seconds)


def variants_for(w: Workload, dtype: str, prompts: np.ndarray, baseline_calls: int, token_budget: int,
                 compiled: bool = False) -> list[Variant]:
    device = next(w.model.parameters()).device
    torch_prompts = torch.from_numpy(prompts).to(device, DTYPES[dtype])

    enc = encode_batch(w.tokenizer, w.kind, w.batch, label_token_ids(w.tokenizer, w.batch.label_words))

    def baseline() -> None:
        with torch.inference_mode():
            for p in range(baseline_calls):
                baseline_call(w, enc, torch_prompts[p])
        _sync(device)

    out = [Variant("baseline", dtype, baseline_calls, baseline, [])]
    kinds: list[tuple[str, dict[str, bool]]] = [("ours", {})]
    if w.kind is ModelKind.CAUSAL:
        kinds += [("ours + fused layers", {"fused": True}), ("ours (whole rows)", {"share_prefix": False})]
    if compiled:
        kinds.append(("ours + torch.compile", {"compile": True}))
    for name, options in kinds:
        backend = w.backend(token_budget=token_budget, **options)
        if options.get("fused") and not backend.fused:
            continue  # the fused path does not apply to this model: the same as "ours"

        def ours(b=backend) -> None:  # type: ignore[no-untyped-def]
            b.score_sync(prompts, w.batch)
            _sync(device)

        if backend.compiled:
            t0 = time.perf_counter()
            ours()
            print(f"{w.name} {dtype}: compiling took {time.perf_counter() - t0:.0f} s (first call)", flush=True)
        out.append(Variant(name, dtype, len(prompts), ours, [], same_work_as="ours" if backend.compiled else None))
    return out


@dataclass
class Peaks:
    """The machine's matrix-product rate through one precision's timings, in FLOP/s.

    ``bursts`` is the best of :data:`PEAK_SHAPES`, each timed for a fraction of a second; ``sustained``
    is ``shape`` (the product fastest in the first bursts) repeated over a window as long as the
    timing it follows. The two differ on a machine whose speed swings: a short window can land
    wholly in a fast spell, a call of several seconds spans fast and slow ones alike.
    """

    shape: Shape
    bursts: list[float] = field(default_factory=list)
    sustained: list[float] = field(default_factory=list)


def measure(variants: list[Variant], rounds: int, device: torch.device, dtype: torch.dtype) -> Peaks:
    """Time each variant once per round, with the sustained product rate measured before the first
    timing and after every one, over a window as long as that timing (this machine's speed drifts, so
    a variant's fraction of the peak compares measurements taken together and of the same length),
    and the burst peak before the first round and after each; then each variant's peak memory,
    untimed."""
    for v in variants:  # warm-up and FLOPs, untimed (a variant follows the one whose work it shares)
        v.run()
        if v.same_work_as is not None:
            v.flops = next(u.flops for u in variants if u.name == v.same_work_as)
            continue
        with FlopCounterMode(display=False) as counter:
            v.run()
        v.flops = counter.get_total_flops() / v.calls
    first = [product_rates(dtype, device, seconds=0.15) for _ in range(3)]
    shape = max(PEAK_SHAPES, key=lambda s: statistics.median(r[s] for r in first))
    peaks = Peaks(shape, bursts=[max(r.values()) for r in first])
    peaks.sustained.append(product_rate(shape, dtype, device, seconds=1.0))
    for _ in range(rounds):
        for v in variants:  # window, variant, window, variant, ..., window: each timing between two
            t0 = time.perf_counter()
            v.run()
            v.seconds.append(time.perf_counter() - t0)
            peaks.sustained.append(product_rate(shape, dtype, device, seconds=v.seconds[-1]))
            v.round_peaks.append((peaks.sustained[-2] + peaks.sustained[-1]) / 2)
        peaks.bursts.append(matmul_peak(dtype, device, seconds=0.15))
    for v in variants:
        v.run_peak = max(peaks.bursts + peaks.sustained)
    with freed_blocks_returned() as trim:
        for v in variants:
            trim()
            with peak_memory(device) as mem:
                v.run()
            v.peak_bytes = mem["peak"]
    return peaks


# -- the report --------------------------------------------------------------------------------


def print_profile(v: Variant, top: int = 12) -> None:
    """Share of one call's operator time per operator, largest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])]) as prof:
        v.run()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    print(f"where {v.name} ({v.dtype}) spends its time: " + ", ".join(
        f"{e.key.removeprefix('aten::')} {100 * e.self_cpu_time_total / total:.1f}%" for e in ops[:top]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--popsize", type=int, help="candidates per timed population (ours; default 20, "
                    "4 for the RoBERTa-large-shaped model on a CPU)")
    ap.add_argument("--baseline-calls", type=int, default=4, help="candidates per timed baseline unit")
    ap.add_argument("--prompt-length", type=int, action="append",
                    help="per workload, in order (default: 10 for embedded, the CPU preset; 50 otherwise)")
    ap.add_argument("--roberta-layers", type=int, default=24, help="depth of the RoBERTa-large-shaped model")
    ap.add_argument("--token-budget", type=int, default=2048, help="padded tokens per pass (ours; fit's default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--project-calls", type=int, default=8000, help="print the minutes this many calls would take")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.json")
    ap.add_argument("--compile", action="store_true", help="also time ours with the model's layers compiled "
                    "(torch.compile; minutes of compilation per workload and precision, untimed)")
    ap.add_argument("--profile", action="store_true", help="also print where one untimed call of ours spends its "
                    "time, by operator (torch.profiler)")
    args = ap.parse_args()

    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"device {device}", flush=True)
    peaks: dict[str, list[Peaks]] = {d: [] for d in args.dtypes}
    results = []
    for i, name in enumerate(args.workloads):
        plen = (args.prompt_length[i] if args.prompt_length and i < len(args.prompt_length)
                else (10 if name == "embedded" else 50))
        popsize = args.popsize or (4 if name != "embedded" and device.type == "cpu" else 20)
        rows = []
        for dtype in args.dtypes:
            extra = {"layers": args.roberta_layers} if name == "roberta-large-shaped" else {}
            w = build(name, dtype, args.device, **extra)
            d = w.model.get_input_embeddings().weight.shape[1]
            std = float(w.model.get_input_embeddings().weight.detach().float().std())
            prompts = (np.random.default_rng(1).standard_normal((popsize, plen, d)) * std).astype(np.float32)
            vs = variants_for(w, dtype, prompts, min(args.baseline_calls, popsize), args.token_budget, args.compile)
            p = measure(vs, args.rounds, device, DTYPES[dtype])
            peaks[dtype].append(p)
            print(f"{name} {dtype}: matmul peak in short windows {min(p.bursts) / 1e9:.0f}-{max(p.bursts) / 1e9:.0f} "
                  f"GFLOP/s (median {statistics.median(p.bursts) / 1e9:.0f}); {'x'.join(map(str, p.shape))} sustained "
                  f"over each timing's length {min(p.sustained) / 1e9:.0f}-{max(p.sustained) / 1e9:.0f} "
                  f"(median {statistics.median(p.sustained) / 1e9:.0f})", flush=True)
            rows += vs
            if args.profile:
                for v in vs:
                    if v.name in ("ours", "ours + fused layers"):
                        print_profile(v)
            tokens = encode_batch(w.tokenizer, w.kind, w.batch).lengths
            del w
        base32 = next((v for v in rows if v.name == "baseline" and v.dtype == "float32"), rows[0])
        print(f"\n{name}: L={plen}, popsize {popsize}, {len(tokens)} inputs per call of "
              f"{tokens.min()}-{tokens.max()} tokens (mean {tokens.mean():.1f}) before the prompt", flush=True)
        print(f"{'variant':<22}{'dtype':<10}{'calls/s':>9}{'x base fp32':>13}{'x base same':>13}"
              f"{'GFLOP/call':>12}{'GFLOP/s':>10}{'% peak':>8}{'% best':>8}{'peak MiB':>10}{f'min/{args.project_calls}':>11}")
        for v in rows:
            same = next(b for b in rows if b.name == "baseline" and b.dtype == v.dtype)
            rate = v.flops * v.calls_per_s
            print(f"{v.name:<22}{v.dtype:<10}{v.calls_per_s:>9.3f}{v.calls_per_s / base32.calls_per_s:>13.2f}"
                  f"{v.calls_per_s / same.calls_per_s:>13.2f}{v.flops / 1e9:>12.2f}{rate / 1e9:>10.1f}"
                  f"{100 * v.fraction_of_peak:>8.1f}{100 * v.best_fraction:>8.1f}{v.peak_bytes / 2**20:>10.0f}"
                  f"{args.project_calls / v.calls_per_s / 60:>11.1f}", flush=True)
            results.append({"workload": name, "prompt_length": plen, "popsize": popsize, **{
                k: getattr(v, k) for k in ("name", "dtype", "calls", "seconds", "flops", "peak_bytes")}, "calls_per_s": v.calls_per_s,
                "gflops_per_s": rate / 1e9, "fractions": v.fractions, "fraction_of_peak": v.fraction_of_peak,
                "best_fraction": v.best_fraction,
                "x_baseline_fp32": v.calls_per_s / base32.calls_per_s,
                "projected_minutes": args.project_calls / v.calls_per_s / 60})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                    "matmul_peak_gflops": {d: max(x for q in p for x in q.bursts) / 1e9
                                                           for d, p in peaks.items() if p},
                                    "matmul_peaks_gflops": {d: [x / 1e9 for q in p for x in q.bursts] for d, p in peaks.items()},
                                    "sustained_gflops": {d: [{"shape": q.shape, "gflops": [x / 1e9 for x in q.sustained]}
                                                         for q in p] for d, p in peaks.items()},
                                    "rows": results}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
