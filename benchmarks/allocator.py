"""Scoring speed with and without the local backend's allocator setting (lmaas_tune/backends/allocator.py).

The setting is per process, so each measurement is a fresh interpreter: rounds alternate between
glibc's defaults (``LMAAS_TUNE_MALLOC=system``) and the setting, each timing ``--calls`` calls of
the embedded model on the SST-2 train set (popsize 20, L=10, the backend's default path), after
one warm-up call. Prints, per variant, the median seconds per call over all rounds, the kernel
(system) CPU seconds and page faults per call, and the ratio of the medians.

    python benchmarks/allocator.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from workloads import embedded

w = embedded(sys.argv[2])
backend = w.backend()
prompts = np.random.default_rng(0).normal(0, 0.02, (20, 10, backend.info.hidden_size)).astype(np.float32)
backend.score_sync(prompts, w.batch)
rows = []
for _ in range(int(sys.argv[3])):
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    backend.score_sync(prompts, w.batch)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    rows.append({"wall": wall, "sys": after.ru_stime - before.ru_stime, "faults": after.ru_minflt - before.ru_minflt})
print(json.dumps(rows))
"""

VARIANTS = {"glibc defaults": {"LMAAS_TUNE_MALLOC": "system"}, "kept (the default)": {}}


def measure(dtype: str, calls: int, env: dict[str, str]) -> list[dict[str, float]]:
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", CHILD, here, dtype, str(calls)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, check=True)
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, env in VARIANTS.items():
            got = measure(args.dtype, args.calls, env)
            rows[name] += got
            print(f"round {r + 1} {name}: " + ", ".join(f"{x['wall']:.2f}" for x in got) + " s/call", flush=True)
    print()
    med = {}
    for name, got in rows.items():
        med[name] = statistics.median(x["wall"] for x in got)
        print(f"{name:20s} median {med[name]:.3f} s/call ({20 / med[name]:.2f} calls/s), "
              f"system CPU {statistics.mean(x['sys'] for x in got):.3f} s/call, "
              f"page faults {statistics.mean(x['faults'] for x in got):.0f}/call")
    base, ours = (med[name] for name in VARIANTS)
    print(f"speed-up of keeping freed memory: {base / ours:.2f}x (medians over {args.rounds} rounds of {args.calls} calls)")


if __name__ == "__main__":
    main()
