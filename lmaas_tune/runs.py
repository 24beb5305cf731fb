"""The run directory: config, an append-only history, the best prompt, and the final result.

Layout::

    config.json        what was run (task spec, model, tuning settings); written once
    history.jsonl      one JSON object per generation, appended and fsynced
    best.json          the best prompt so far: z, the projection that rebuilds it, its scores
    best_prompt.npy    the same prompt as an L x D float32 array (np.load, no pickle)
    result.json        final metrics, written when the run finishes
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RunDirectoryError

CONFIG, HISTORY, BEST, BEST_PROMPT, RESULT = "config.json", "history.jsonl", "best.json", "best_prompt.npy", "result.json"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDirectory:
    """Reads and writes one run's files. Writes are atomic; the history is append-only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any]) -> "RunDirectory":
        run = cls(path)
        if (run.path / CONFIG).exists():
            raise RunDirectoryError(
                f"{run.path} already holds a run; choose another --output or remove that directory"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_json(CONFIG, config)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDirectory":
        run = cls(path)
        if not (run.path / CONFIG).is_file():
            raise RunDirectoryError(f"{run.path} is not a run directory (no {CONFIG}); pass the --output of a fit")
        return run

    def write_json(self, name: str, obj: Any) -> None:
        _atomic_write(self.path / name, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.is_file():
            raise RunDirectoryError(f"{p} is missing; the run may not have finished")
        try:
            return json.loads(p.read_text("utf-8"))
        except ValueError as exc:
            raise RunDirectoryError(f"{p} is corrupt ({exc})") from exc

    @property
    def config(self) -> dict[str, Any]:
        return self.read_json(CONFIG)

    def append_history(self, record: dict[str, Any]) -> None:
        with (self.path / HISTORY).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def history(self) -> list[dict[str, Any]]:
        p = self.path / HISTORY
        if not p.is_file():
            return []
        lines = p.read_text("utf-8").splitlines()
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                if i == len(lines) - 1:  # a torn last line from a crash mid-write
                    break
                raise RunDirectoryError(f"{p} line {i + 1} is corrupt ({exc})") from exc
        return out

    def save_best(self, best: dict[str, Any], prompt: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(prompt, dtype=np.float32), allow_pickle=False)
        _atomic_write(self.path / BEST_PROMPT, buf.getvalue())
        self.write_json(BEST, best)

    @property
    def best(self) -> dict[str, Any]:
        return self.read_json(BEST)

    @property
    def result(self) -> dict[str, Any]:
        return self.read_json(RESULT)
