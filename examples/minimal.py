"""The library in five lines: tune a soft prompt for SST-2 and print its test accuracy.

    python examples/minimal.py                              # the embedded SmolLM2-135M, CPU preset (400 calls)
    LMAAS_TUNE_MODEL=./some-model-dir LMAAS_TUNE_BUDGET=100 python examples/minimal.py

(The two variables are for trying it elsewhere; the README shows it without them.)
"""

import asyncio
import os

from lmaas_tune import PRESETS, BlackBoxTuner, LocalBackend, get_task


async def main() -> None:
    async with LocalBackend.load(os.environ.get("LMAAS_TUNE_MODEL", "smollm2-135m")) as backend:
        config = PRESETS.get("cpu").config.with_overrides(budget=int(os.environ.get("LMAAS_TUNE_BUDGET", 400)))
        result = await BlackBoxTuner(get_task("sst2"), backend, config).fit()
    print(f"test accuracy {result.test.accuracy:.4f}")


asyncio.run(main())
