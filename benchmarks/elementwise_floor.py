"""How much of a transformer layer's time its matrix products can take on this machine, at best.

A forward pass reaches a fraction of the matrix-product peak no higher than

    products / (products + the elementwise work any faithful pass must do)

This script times both sides on one layer of a Llama-architecture model (the embedded model's sizes
by default) for one pass of ``--rows`` x ``--tokens`` text tokens on a prefix of ``--prefix``
positions, interleaved over ``--rounds`` rounds, and prints that ceiling per round:

* products: q, k/v, o, gate, up and down, each one ``F.linear`` on its real shape;
* the elementwise floor: each operator the model's numerics need, once, at its best over the
  kernels PyTorch has here: SiLU of the gate, the gating product, two RMSNorms (a reduction and a
  scaling each, in float32 as the model rounds them, then times the weight), two residual
  additions, the rotary embedding of q and k, and the softmax of the attention scores (the
  attention products themselves count as products). Nothing is charged for memory copies, padding,
  the prefix pass, the output layer or Python.

So the ceiling is generous: a real pass does more. If it sits below some bar for a precision, no
implementation built from these kernels reaches the bar on this machine.

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
    products = [lambda w=w, a=(inner if name == "down" else x): F.linear(a, w) for name, w in weights.items()]
    flops = 2.0 * m * sum(w.numel() for w in weights.values())
    # attention products (scores and mixing) count on the products' side
    q4 = rand(rows * kv_heads, heads // kv_heads * tokens, dim, dt=torch.float32)
    k4, v4 = rand(rows * kv_heads, span, dim, dt=torch.float32), rand(rows * kv_heads, span, dim, dt=torch.float32)
    products += [lambda: torch.bmm(q4, k4.transpose(1, 2)), lambda: torch.bmm(torch.empty(q4.shape[0], q4.shape[1], span), v4)]
    flops += 2 * 2.0 * q4.shape[0] * q4.shape[1] * span * dim

    gate, up = rand(m, ffn), rand(m, ffn)
    norm_w = rand(hidden)
    q_rot, k_rot = rand(m, heads, dim), rand(m, kv_heads, dim)
    cos, sin = rand(tokens, 1, dim, dt=torch.float32), rand(tokens, 1, dim, dt=torch.float32)
    scores = rand(q4.shape[0], q4.shape[1], span, dt=torch.float32)
    silu_out, gated_out, sum_out = torch.empty_like(gate), torch.empty_like(gate), torch.empty_like(x)

    def rms_norm() -> torch.Tensor:
        x32 = x.float()
        scale = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(hidden).add_(1e-5).rsqrt_()
        return (x32 * scale if x32 is x else x32.mul_(scale)).to(dtype).mul_(norm_w)

    def rotary(t: torch.Tensor) -> torch.Tensor:
        t = t.view(rows, tokens, -1, dim).float()
        half = dim // 2
        out = t * cos
        out[..., :half].addcmul_(t[..., half:], sin[..., :half], value=-1)
        out[..., half:].addcmul_(t[..., :half], sin[..., half:])
        return out

    floor = {
        "silu(gate)": lambda: torch.ops.aten.silu.out(gate, out=silu_out),
        "gate*up": lambda: torch.mul(gate, up, out=gated_out),
        "2 rms norms": lambda: (rms_norm(), rms_norm()),
        "2 residual adds": lambda: (torch.add(x, x2, out=sum_out), torch.add(x, x2, out=sum_out)),
        "rotary q, k": lambda: (rotary(q_rot), rotary(k_rot)),
        "softmax": lambda: torch.softmax(scores, dim=-1),
    }
    return products, floor, flops


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
    ap.add_argument("--reps", type=int, default=10, help="calls per timing")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one layer, hidden {args.hidden}, FFN "
          f"{args.ffn}, {args.heads}/{args.kv_heads} heads, {args.rows} rows x {args.tokens} tokens on a "
          f"{args.prefix}-position prefix", flush=True)
    with torch.inference_mode():
        for name in args.dtypes:
            products, floor, flops = layer_work(DTYPES[name], args.rows, args.tokens, args.prefix, args.hidden,
                                                args.ffn, args.heads, args.kv_heads)
            ceilings, shares = [], {k: [] for k in floor}
            for r in range(args.rounds):  # products and floor back to back, so both see the same machine
                t_products = sum(timed(p, args.reps) for p in products)
                t_floor = {k: timed(f, args.reps) for k, f in floor.items()}
                total = sum(t_floor.values())
                ceilings.append(t_products / (t_products + total))
                for k, t in t_floor.items():
                    shares[k].append(t / t_products)
                print(f"{name} round {r + 1}: products {t_products * 1e3:.2f} ms ({flops / t_products / 1e9:.0f} GFLOP/s), "
                      f"elementwise floor {total * 1e3:.2f} ms, ceiling {100 * ceilings[-1]:.1f}% of the product rate",
                      flush=True)
            print(f"{name}: ceiling median {100 * statistics.median(ceilings):.1f}% "
                  f"(range {100 * min(ceilings):.1f}-{100 * max(ceilings):.1f}); each operator's time as a share of "
                  f"the products': " + ", ".join(f"{k} {100 * statistics.median(v):.0f}%" for k, v in shares.items()),
                  flush=True)


if __name__ == "__main__":
    main()
