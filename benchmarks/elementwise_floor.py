"""How much of a transformer layer's time its matrix products can take on this machine, at best.

A forward pass reaches a fraction of the matrix-product peak no higher than

    products / (products + the elementwise work any faithful pass must do)

This script times both sides on one layer of a Llama-architecture model (the embedded model's sizes
by default) for one pass of ``--rows`` x ``--tokens`` text tokens on a prefix of ``--prefix``
positions, interleaved over ``--rounds`` rounds, and prints that ceiling per round:

* products: q, k/v, o, gate, up and down, each one ``F.linear`` on its real shape;
* the elementwise floor: each operator the model's numerics need, once, with PyTorch's kernels:
  SiLU of the gate, the gating product, two RMSNorms and the rotary embedding of q and k (the fused
  path's own :func:`rms_norm` and :func:`rotate`, which round where the model rounds), two
  residual additions, and the softmax of the attention scores (the attention products themselves
  count as products). Nothing is charged for memory copies, padding,
  the prefix pass, the output layer or Python.

So the ceiling is generous: a real pass does more. If it sits below some bar for a precision, no
implementation built from these kernels reaches the bar on this machine.

Each round also times the project's own pass over the same rows (:class:`FusedLlama` on a
randomly initialised model of these sizes, ``--layers`` deep, including its last block's readout
shortcut), and prints its FLOP/s (counted by ``torch.utils.flop_counter``) as a fraction of the
product rate of that round: how far a real pass sits below the ceiling.

    python benchmarks/elementwise_floor.py                       # bfloat16 and float32
    python benchmarks/elementwise_floor.py --dtypes bfloat16 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lmaas_tune.backends.local.fused_llama import FusedLlama, rms_norm, rotate

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def timed(fn: Callable[[], object], reps: int) -> float:
    """Seconds per call of ``fn``, over ``reps`` calls after one untimed."""
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def layer_work(dtype: torch.dtype, rows: int, tokens: int, prefix: int, hidden: int, ffn: int, heads: int,
               kv_heads: int) -> tuple[list[Callable[[], object]], dict[str, Callable[[], object]], float]:
    """The products of one layer, the elementwise floor's operators by name, and the products' FLOPs."""
    dim = hidden // heads
    m, span = rows * tokens, prefix + tokens
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dt)

    x, x2 = rand(m, hidden), rand(m, hidden)
    weights = {"q": rand(hidden, hidden), "kv": rand(2 * kv_heads * dim, hidden), "o": rand(hidden, hidden),
               "gate": rand(ffn, hidden), "up": rand(ffn, hidden), "down": rand(hidden, ffn)}
    inner = rand(m, ffn)
    def product(a: torch.Tensor, w: torch.Tensor) -> Callable[[], object]:
        return lambda: F.linear(a, w)

    products = [product(inner if name == "down" else x, w) for name, w in weights.items()]
    flops = 2.0 * m * sum(w.numel() for w in weights.values())
    # attention products (scores and mixing) count on the products' side
    q4 = rand(rows * kv_heads, heads // kv_heads * tokens, dim, dt=torch.float32)
    k4, v4 = rand(rows * kv_heads, span, dim, dt=torch.float32), rand(rows * kv_heads, span, dim, dt=torch.float32)
    products += [lambda: torch.bmm(q4, k4.transpose(1, 2)), lambda: torch.bmm(torch.empty(q4.shape[0], q4.shape[1], span), v4)]
    flops += 2 * 2.0 * q4.shape[0] * q4.shape[1] * span * dim

    gate, up = rand(m, ffn), rand(m, ffn)
    norm_w = rand(hidden)
    q_rot, k_rot = rand(rows, tokens, heads, dim), rand(rows, tokens, kv_heads, dim)
    cos, sin = rand(tokens, 1, dim, dt=torch.float32), rand(tokens, 1, dim, dt=torch.float32)
    scores = rand(q4.shape[0], q4.shape[1], span, dt=torch.float32)
    silu_out, gated_out, sum_out = torch.empty_like(gate), torch.empty_like(gate), torch.empty_like(x)

    rotated_q, rotated_k = torch.empty(rows, tokens, heads, dim), torch.empty(rows, tokens, kv_heads, dim)
    floor = {
        "silu(gate)": lambda: torch.ops.aten.silu.out(gate, out=silu_out),
        "gate*up": lambda: torch.mul(gate, up, out=gated_out),
        "2 rms norms": lambda: (rms_norm(x, norm_w, 1e-5), rms_norm(x, norm_w, 1e-5)),
        "2 residual adds": lambda: (torch.add(x, x2, out=sum_out), torch.add(x, x2, out=sum_out)),
        "rotary q, k": lambda: (rotate(q_rot, cos, sin, out=rotated_q), rotate(k_rot, cos, sin, out=rotated_k)),
        "softmax": lambda: torch.softmax(scores, dim=-1),
    }
    return products, floor, flops


def fused_pass(dtype: torch.dtype, args: argparse.Namespace) -> tuple[Callable[[], object], float]:
    """The fused pass over ``rows`` x ``tokens`` on a ``prefix``-position prefix of a random model, and its FLOPs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=2048, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).to(dtype=dtype).eval()
    fused, dim = FusedLlama(model), args.hidden // args.heads
    candidates = 20
    kv = [(torch.randn(candidates, args.kv_heads, args.prefix, dim), torch.randn(candidates, args.kv_heads, args.prefix, dim))
          for _ in range(args.layers)]
    embeds = torch.randn(args.rows, args.tokens, args.hidden).to(dtype) * 0.05
    rows = torch.arange(args.rows) % candidates
    positions = torch.full((args.rows,), args.tokens - 1)

    def run() -> object:
        return fused.hidden_at(embeds, kv, rows, positions)

    run()
    with FlopCounterMode(display=False) as counter:
        run()
    return run, float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=list(DTYPES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rows", type=int, default=70, help="rows of one pass (default: a 2048-token pass of the SST-2 "
                    "batch with a 10-token prompt)")
    ap.add_argument("--tokens", type=int, default=19, help="text tokens per row")
    ap.add_argument("--prefix", type=int, default=11, help="prefix positions each row attends to")
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--layers", type=int, default=30, help="depth of the model the fused pass runs")
    ap.add_argument("--reps", type=int, default=10, help="calls per timing of one product or operator")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one layer, hidden {args.hidden}, FFN "
          f"{args.ffn}, {args.heads}/{args.kv_heads} heads, {args.rows} rows x {args.tokens} tokens on a "
          f"{args.prefix}-position prefix", flush=True)
    with torch.inference_mode():
        for name in args.dtypes:
            products, floor, flops = layer_work(DTYPES[name], args.rows, args.tokens, args.prefix, args.hidden,
                                                args.ffn, args.heads, args.kv_heads)
            run_fused, fused_flops = fused_pass(DTYPES[name], args)
            ceilings: list[float] = []
            reached: list[float] = []
            shares: dict[str, list[float]] = {k: [] for k in floor}
            for r in range(args.rounds):  # all back to back, so they see the same machine
                t_fused = timed(run_fused, 1)
                t_products = sum(timed(p, args.reps) for p in products)
                t_floor = {k: timed(f, args.reps) for k, f in floor.items()}
                total = sum(t_floor.values())
                rate = flops / t_products
                ceilings.append(t_products / (t_products + total))
                reached.append(fused_flops / t_fused / rate)
                for k, t in t_floor.items():
                    shares[k].append(t / t_products)
                print(f"{name} round {r + 1}: products {t_products * 1e3:.2f} ms ({rate / 1e9:.0f} GFLOP/s), "
                      f"elementwise floor {total * 1e3:.2f} ms: ceiling {100 * ceilings[-1]:.1f}% of the product rate; "
                      f"the fused pass reached {100 * reached[-1]:.1f}%", flush=True)
            print(f"{name}: ceiling median {100 * statistics.median(ceilings):.1f}% "
                  f"(range {100 * min(ceilings):.1f}-{100 * max(ceilings):.1f}), the fused pass "
                  f"{100 * statistics.median(reached):.1f}% (range {100 * min(reached):.1f}-{100 * max(reached):.1f}); "
                  f"each operator's time as a share of the products': "
                  + ", ".join(f"{k} {100 * statistics.median(v):.0f}%" for k, v in shares.items()), flush=True)


if __name__ == "__main__":
    main()
