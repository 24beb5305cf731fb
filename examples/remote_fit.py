"""Both halves of LMaaS in one script: serve a model over HTTP, then tune a prompt through it.

The service is the real ``lmaas-tune serve`` application on 127.0.0.1 (in this process, for a
self-contained example); the tuner only sees it through the remote backend, exactly as it would
see a model hosted on another machine. With ``--compare`` the same fit also runs on the model
in-process and the two results are printed side by side (they agree: same seed, same model).

    python examples/remote_fit.py                        # embedded SmolLM2, SST-2, 40 calls (a few minutes on a CPU)
    python examples/remote_fit.py --budget 200 --compare
    python examples/remote_fit.py --model ./some-model-dir --task rte --upload embeddings
"""

from __future__ import annotations

import argparse
import asyncio
import time

from lmaas_tune.backends import LocalBackend
from lmaas_tune.backends.remote.client import RemoteBackend
from lmaas_tune.cli.display import describe
from lmaas_tune.methods import PRESETS
from lmaas_tune.server import RunningServer, ServerConfig
from lmaas_tune.tasks import get_task
from lmaas_tune.tuning.tuner import BlackBoxTuner, FitResult, GenerationReport


def show(event: object) -> None:
    if isinstance(event, GenerationReport):
        print("  " + describe(event), flush=True)


def summary(name: str, r: FitResult) -> str:
    test = f"{r.test.value:.4f} on {r.test.n}" if r.test else "-"
    return (f"{name:>6}: dev {r.metric} {r.dev:.4f}, test {test}, {r.calls} calls, {r.wall_time:.0f} s, "
            f"ledger {r.ledger}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, .gguf file or model directory")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--upload", default="auto", choices=["auto", "embeddings", "projection"])
    parser.add_argument("--compare", action="store_true", help="also fit in-process and compare")
    args = parser.parse_args()

    config = PRESETS.get("cpu").config.with_overrides(budget=args.budget, seed=args.seed)
    task = get_task(args.task)
    start = time.perf_counter()
    backend = LocalBackend.load(args.model, device="cpu")
    print(f"loaded {backend.info.model_id} in {time.perf_counter() - start:.1f} s")
    async with backend, RunningServer(backend, ServerConfig(port=0)) as server:
        print(f"serving on {server.url}; tuning {args.task} through it ({args.budget} calls, L={config.prompt_length})")
        async with RemoteBackend([server.url], upload=args.upload) as remote:
            print(f"remote backend: {remote.info.model_id}, upload mode {remote.upload_mode}")
            remote_fit = await BlackBoxTuner(task, remote, config, callbacks=[show]).fit()
        print(summary("remote", remote_fit))
        print(f"the service merged {server.service.batcher.requests} requests into {server.service.batcher.passes} forward passes")
    if args.compare:
        async with LocalBackend.load(args.model, device="cpu") as local_backend:
            local_fit = await BlackBoxTuner(task, local_backend, config, callbacks=[show]).fit()
        print(summary("local", local_fit))
        same = (remote_fit.best_z == local_fit.best_z).all() and remote_fit.dev == local_fit.dev
        print("same best prompt and dev metric:", bool(same))


if __name__ == "__main__":
    asyncio.run(main())
