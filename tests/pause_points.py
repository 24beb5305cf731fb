"""Named points inside a running fit where a test stops it (not a test module).

The library has no test hooks: :func:`install` wraps the real functions a fit calls, so that
``hook(stage, generation)`` runs at these points, in order within a generation:

* ``history``: the generation's record is appended to ``history.jsonl``, nothing else written;
* ``optimizer``: the optimiser's state file is written, ``checkpoint.json`` is not;
* ``commit``: the new ``checkpoint.json`` is written and fsynced under its temporary name, not yet
  renamed into place;
* ``evaluate``: the last generation is committed; the final test evaluation has not started.

Generation 0 is the checkpoint a new run writes before its first generation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmaas_tune.runs import checkpoint as checkpoint_module
from lmaas_tune.runs.directory import RunDirectory
from lmaas_tune.tuning.tuner import BlackBoxTuner

Hook = Callable[[str, int], None]
_STATE_FILE = re.compile(r"checkpoint-cma-(\d{6})\.pkl")
# the real functions, taken once: installing again replaces the hook instead of stacking wrappers
_APPEND_HISTORY = RunDirectory.append_history
_ATOMIC_WRITE = checkpoint_module.atomic_write
_FINISH = BlackBoxTuner._finish


def install(hook: Hook, setattr: Callable[[Any, str, Any], None] = setattr) -> None:
    """Wrap the fit's functions so ``hook`` runs at each point (``setattr``: e.g. ``monkeypatch.setattr``)."""
    append_history, atomic_write, finish = _APPEND_HISTORY, _ATOMIC_WRITE, _FINISH

    def append_then_hook(self: RunDirectory, record: dict[str, Any]) -> None:
        append_history(self, record)
        hook("history", int(record["generation"]))

    def write_with_hooks(path: Path, data: bytes, *, before_replace: Callable[[], None] | None = None) -> None:
        if path.name == checkpoint_module.CHECKPOINT:
            doc = json.loads(data)
            if doc.get("status") == "running":
                generation = int(doc["generation"])
                atomic_write(path, data, before_replace=lambda: hook("commit", generation))
                return
        atomic_write(path, data, before_replace=before_replace)
        state = _STATE_FILE.fullmatch(path.name)
        if state:
            hook("optimizer", int(state.group(1)))

    async def hook_then_finish(self: BlackBoxTuner, s: Any, start: float) -> Any:
        if s.run is not None:
            hook("evaluate", s.state.generation)
        return await finish(self, s, start)

    setattr(RunDirectory, "append_history", append_then_hook)
    setattr(checkpoint_module, "atomic_write", write_with_hooks)
    setattr(BlackBoxTuner, "_finish", hook_then_finish)
