"""``lmaas-tune`` that pauses at a named point of a fit, for the crash tests (not a test module).

``LMAAS_TUNE_TEST_PAUSE=G:STAGE python tests/pause_cli.py fit ...`` prints
``LMAAS_TUNE_TEST_PAUSED STAGE G`` to stderr at that point (see :mod:`pause_points`) and sleeps,
so the test can SIGKILL the process exactly there.
"""

from __future__ import annotations

import os
import sys
import time

import pause_points

from lmaas_tune.cli import main


def _pause(stage: str, generation: int) -> None:
    if os.environ.get("LMAAS_TUNE_TEST_PAUSE") == f"{generation}:{stage}":
        print(f"LMAAS_TUNE_TEST_PAUSED {stage} {generation}", file=sys.stderr, flush=True)
        time.sleep(300)  # the test kills the process long before this ends


if __name__ == "__main__":
    pause_points.install(_pause)
    sys.argv[0] = "lmaas-tune"
    main()
