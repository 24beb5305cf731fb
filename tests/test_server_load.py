"""A small, bounded run of benchmarks/server_load.py against a real service: no 5xx under load.

No timing is asserted (the numbers are the benchmark's business); only that every one of the
requests, sent 16 at a time, was answered 200 and that the report adds up.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from remote_support import ThreadedServer

from lmaas_tune.backends.local.backend import LocalBackend

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "server_load.py"


def _load_module():  # noqa: ANN202 - a module object
    spec = importlib.util.spec_from_file_location("server_load", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["server_load"] = module  # dataclasses look their module up there
    if str(SCRIPT.parent) not in sys.path:  # as when run as a script: its folder's modules import
        sys.path.insert(0, str(SCRIPT.parent))
    spec.loader.exec_module(module)
    return module


async def test_bounded_load_gets_no_server_errors(llama_backend: LocalBackend) -> None:
    bench = _load_module()
    with ThreadedServer(llama_backend) as service:
        for upload in ("projection", "embeddings"):
            report = await bench.run_load(service.url, clients=16, requests=2, prompts=2, upload=upload)
            assert report.requests == 32
            assert report.statuses == {200: 32}, report.line()
            assert report.server_errors == 0
            assert 0 < report.p50_ms <= report.p99_ms <= report.max_ms
