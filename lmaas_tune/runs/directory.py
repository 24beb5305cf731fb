"""The run directory: config, an append-only history, the best prompt, and the final result.

Layout::

    (record)           what was run (task, model, tuning settings): :mod:`.record`; written once
    history.jsonl      one JSON object per generation, appended and fsynced
    best.json          the best prompt so far: z, the projection that rebuilds it, its scores
    best_prompt.npy    the same prompt as an L x D float32 array (np.load, no pickle)
    initial_prompt.npy p0 of p = A z + p0, when the run starts from a text (--prompt-init)
    checkpoint.json    where the run stands after its last complete generation (see checkpoint.py)
    checkpoint-cma-NNNNNN.pkl  the optimiser state that checkpoint.json names
    result.json        final metrics, written when the run finishes

Every file but the history is replaced atomically (temporary file, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new version, never a torn one.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lmaas_tune.errors import RunDirectoryError

from .atomic import atomic_write
from .record import CONFIG, RunConfig

HISTORY, BEST, BEST_PROMPT, RESULT = "history.jsonl", "best.json", "best_prompt.npy", "result.json"
INITIAL_PROMPT = "initial_prompt.npy"
_TEMPORARY = tuple(f".{name}." for name in (CONFIG, BEST, BEST_PROMPT, RESULT, INITIAL_PROMPT)) + (".checkpoint",)


class RunDirectory:
    """One run's files. Writes are atomic; the history is append-only.

    :meth:`open` reads the run's :class:`~.record.RunConfig` once and keeps it as :attr:`record`;
    hand the opened object on rather than opening the directory again.
    """

    def __init__(self, path: str | Path, record: RunConfig | None = None) -> None:
        self.path = Path(path)
        self._record = record

    @classmethod
    def create(cls, path: str | Path, record: RunConfig) -> "RunDirectory":
        """A new run in ``path``, which must not exist yet or be an empty directory."""
        run = cls(path, record)
        if RunConfig.exists(run.path):
            raise RunDirectoryError(
                f"{run.path} already holds a run; continue it with `lmaas-tune fit --resume {run.path}`, "
                f"or choose another --output"
            )
        if run.path.exists() and not run.path.is_dir():
            raise RunDirectoryError(f"--output {run.path} is a file, not a directory; choose another --output")
        if run.path.is_dir() and any(not p.name.startswith(".") for p in run.path.iterdir()):
            raise RunDirectoryError(
                f"{run.path} is not empty and holds no run (no {CONFIG}); choose a new or empty --output"
            )
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(f"cannot create {run.path} ({exc.strerror or exc}); choose another --output") from None
        record.write(run.path)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDirectory":
        """The run in ``path``, its record read (a :class:`RunDirectoryError` if it holds none)."""
        path = Path(path)
        return cls(path, RunConfig.read(path))

    @property
    def record(self) -> RunConfig:
        """What the run is (task, settings, model): read once by :meth:`open`, or given to :meth:`create`."""
        if self._record is None:
            self._record = RunConfig.read(self.path)
        return self._record

    @property
    def finished(self) -> bool:
        """Whether the run wrote its result (it has nothing left to do)."""
        return (self.path / RESULT).is_file()

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write(self.path / name, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.is_file():
            raise RunDirectoryError(f"{p} is missing; the run may not have finished")
        try:
            return json.loads(p.read_text("utf-8"))
        except ValueError as exc:
            raise RunDirectoryError(f"{p} is corrupt ({exc})") from exc

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

    def rewind_history(self, records: int) -> None:
        """Keep the first ``records`` lines of the history, cutting off a torn last line and any
        record written after the checkpoint (they are written again when the run continues)."""
        p = self.path / HISTORY
        data = p.read_bytes() if p.is_file() else b""
        offset, kept = 0, 0
        while kept < records:
            end = data.find(b"\n", offset)
            if end < 0:
                break
            try:
                json.loads(data[offset:end])
            except ValueError as exc:
                raise RunDirectoryError(f"{p} line {kept + 1} is corrupt ({exc})") from exc
            offset, kept = end + 1, kept + 1
        if kept < records:
            raise RunDirectoryError(
                f"{p} holds {kept} complete generation(s) but the checkpoint is at generation {records}; "
                f"the run directory was changed by hand"
            )
        if offset < len(data):
            with p.open("r+b") as fh:
                fh.truncate(offset)
                fh.flush()
                os.fsync(fh.fileno())

    def remove_leftovers(self, keep: set[str]) -> None:
        """Delete temporary files of interrupted atomic writes, and optimiser files not in ``keep``."""
        for p in self.path.iterdir():
            stale_tmp = p.name.startswith(_TEMPORARY) and p.is_file()
            stale_state = p.name.startswith("checkpoint-") and p.suffix == ".pkl" and p.name not in keep
            if stale_tmp or stale_state:
                p.unlink(missing_ok=True)

    def clear_best(self) -> None:
        for name in (BEST, BEST_PROMPT):
            (self.path / name).unlink(missing_ok=True)

    def _write_array(self, name: str, arr: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(arr, dtype=np.float32), allow_pickle=False)
        atomic_write(self.path / name, buf.getvalue())

    def save_best(self, best: dict[str, Any], prompt: np.ndarray) -> None:
        self._write_array(BEST_PROMPT, prompt)
        self.write_json(BEST, best)

    def save_initial_prompt(self, prompt: np.ndarray | None) -> None:
        """Store p0 (``None``: the run starts from zeros and stores nothing)."""
        if prompt is None:
            (self.path / INITIAL_PROMPT).unlink(missing_ok=True)
        else:
            self._write_array(INITIAL_PROMPT, prompt)

    @property
    def initial_prompt(self) -> np.ndarray | None:
        """The run's p0, or ``None`` for zeros."""
        p = self.path / INITIAL_PROMPT
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RunDirectoryError(f"{p} is corrupt ({exc})") from exc

    @property
    def best(self) -> dict[str, Any]:
        return self.read_json(BEST)

    @property
    def result(self) -> dict[str, Any]:
        return self.read_json(RESULT)
