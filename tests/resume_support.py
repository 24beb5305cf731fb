"""Helpers for the checkpoint, resume and CLI-process tests (not a test module)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

TIMING = ("elapsed", "calls_per_s", "wall_time_s")


class Crash(BaseException):
    """Stands in for the process dying at a hook (BaseException: nothing may swallow it)."""


def history(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of the history (all must parse), without the timing fields."""
    lines = (run_dir / "history.jsonl").read_text("utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def outcome(run_dir: Path) -> dict[str, Any]:
    """What a finished run decided, without timings: result, best prompt, history, final ledger."""
    result = {k: v for k, v in json.loads((run_dir / "result.json").read_text("utf-8")).items() if k not in TIMING}
    checkpoint = json.loads((run_dir / "checkpoint.json").read_text("utf-8"))
    return {
        "result": result,
        "best": json.loads((run_dir / "best.json").read_text("utf-8")),
        "best_prompt": (run_dir / "best_prompt.npy").read_bytes(),
        "history": history(run_dir),
        "ledger": checkpoint["ledger"],
        "loop": {k: v for k, v in checkpoint["loop"].items() if k not in ("elapsed_s",)},
    }


def assert_same_outcome(got: Path, want: Path) -> None:
    a, b = outcome(got), outcome(want)
    for key in b:
        assert a[key] == b[key], f"{key} differs between {got} and {want}"


def checkpoint_doc(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "checkpoint.json").read_text("utf-8"))


class CliProcess:
    """The installed ``lmaas-tune`` console script as a real process; its stderr read by a thread.

    With ``LMAAS_TUNE_TEST_PAUSE=G:STAGE`` in ``env`` the same CLI runs through ``pause_cli.py``,
    which stops at that point of the fit (see ``pause_points.py``) for the test to kill it there.
    """

    def __init__(self, args: list[str], **env: str) -> None:
        exe = [shutil.which("lmaas-tune") or str(Path(sys.executable).parent / "lmaas-tune")]
        if "LMAAS_TUNE_TEST_PAUSE" in env:
            exe = [sys.executable, str(Path(__file__).with_name("pause_cli.py"))]
        full_env = {k: v for k, v in os.environ.items() if k != "LMAAS_TUNE_TEST_PAUSE"}
        full_env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env})
        self.proc = subprocess.Popen([*exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=full_env)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, needle: str, limit_s: float = 300.0) -> str:
        """Block until a stderr line contains ``needle`` and return it (fails if the process ends first).

        A thread reads stderr into a queue: select() on the pipe would miss lines already sitting
        in the file object's buffer when several arrive in one chunk.
        """
        deadline = time.monotonic() + limit_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if needle in line:
                return line
        self.proc.kill()
        raise AssertionError(f"never saw {needle!r} on stderr:\n" + "".join(self.lines))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 300.0) -> tuple[int, str, str]:
        """Wait for the exit: (return code, stdout, stderr)."""
        out = self.proc.stdout.read() if self.proc.stdout else ""
        self.proc.wait(timeout=timeout)
        self._thread.join(timeout=timeout)
        return self.proc.returncode, out, "".join(self.lines)
