"""The local backend keeps freed activation memory in the process (glibc), unless told not to.

Each case runs in a fresh interpreter, since the setting is per process and this one has already
created backends. The workload is the allocation pattern of a forward pass in the backend's worker
thread: buffers of a few sizes, several alive at once, all freed, again and again; what is counted
is the page faults after a warm-up.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"),
    reason="the allocator setting is for glibc on Linux",
)

SCRIPT = textwrap.dedent("""
    import json, resource, sys, threading
    import numpy as np
    from lmaas_tune.backends import LocalBackend
    from lmaas_tune.backends import allocator

    LocalBackend.load(sys.argv[1], device="cpu", dtype="float32")
    sizes = [m << 20 for m in (3, 7, 12, 5, 10, 9, 11, 2, 6)]
    out = {"applied": allocator.keep_freed_memory()}

    def passes(n):
        for _ in range(n):
            alive = []
            for size in sizes:
                buf = np.empty(size, np.uint8)
                buf.fill(1)  # touch every page
                alive = (alive + [buf])[-3:]

    def work():
        passes(3)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        passes(20)
        out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    print(json.dumps(out))
""")


def _run(model_dir: Path, **env: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_cpu_backend_stops_the_page_faults_of_reused_buffers_and_the_opt_out_keeps_them(llama_dir: Path) -> None:
    kept = _run(llama_dir)
    system = _run(llama_dir, LMAAS_TUNE_MALLOC="system")
    assert kept["applied"] is True and system["applied"] is False
    # 20 passes touch 65 MB each: glibc's defaults fault most of it in again every pass (~56k faults
    # here); with the setting the freed blocks are reused and nothing faults
    assert isinstance(kept["faults"], int) and isinstance(system["faults"], int)
    assert kept["faults"] < 200, kept
    assert system["faults"] > 10_000, system
