"""Helpers for the sweep tests (not a test module).

:func:`install_pause` is a Ray ``worker_process_setup_hook``: it runs in every Ray worker this
test module's Ray starts, and wraps the run directory's history append (the library has no test
hooks) so that the trial the control file names stops after the generation it names: the worker
writes its pid to the control file's ``marker`` and sleeps, for the test to SIGKILL it there. Once
the marker exists it never pauses again, so the retried attempt runs through.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

CONTROL = "LMAAS_TUNE_TEST_SWEEP_PAUSE"


def install_pause() -> None:
    from lmaas_tune.runs.directory import RunDirectory

    append = RunDirectory.append_history

    def append_then_pause(self: RunDirectory, record: dict[str, Any]) -> None:
        append(self, record)
        control = Path(os.environ.get(CONTROL, "/nonexistent"))
        if not control.is_file():
            return
        doc = json.loads(control.read_text("utf-8"))
        marker = Path(doc["marker"])
        if self.path.name == doc["trial"] and int(record["generation"]) == int(doc["generation"]) \
                and not marker.exists():
            marker.write_text(str(os.getpid()), "utf-8")
            time.sleep(300)  # the test kills this process long before

    RunDirectory.append_history = append_then_pause  # type: ignore[method-assign]


def wait_for(predicate: Any, what: str, limit_s: float = 240.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
