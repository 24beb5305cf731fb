"""The sweep directory: what the sweep is, and one run directory per trial.

Layout::

    sweep.json               the trials (each resolved: task, tuning settings, backend), the grid and
                             settings they came from, tasks left out and why, and how it was run
    trials/<id>/             each trial's run directory, exactly as ``fit --output`` makes it
    attempts/<id>.jsonl      one line each time a worker starts the trial (node, host, pid, session),
                             and one when it ends (finished or failed, with the one-line error)
    attempts/<id>.lock       locked by the worker running the trial: one attempt at a time

The run directories are the source of truth: a trial is finished when its run directory holds
its result. Resuming a sweep reads the trials back from ``sweep.json`` and runs those that are not
(each continues from its own checkpoint). ``sweep.json`` is written once; the attempt logs are
append-only, one writer per trial at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmaas_tune.errors import RunDirectoryError
from lmaas_tune.runs.atomic import atomic_write
from lmaas_tune.runs.directory import RESULT

from .trials import TrialSpec, check_unique

SWEEP, TRIALS, ATTEMPTS = "sweep.json", "trials", "attempts"
FORMAT = 1


class SweepDirectory:
    """One sweep's files; :meth:`create` a new one, :meth:`open` one to resume or report."""

    def __init__(self, path: Path, doc: Mapping[str, Any]) -> None:
        self.path = path
        self._doc = doc
        self.trials = tuple(TrialSpec.from_dict(t) for t in doc["trials"])

    @classmethod
    def create(cls, path: str | Path, trials: Sequence[TrialSpec], *, settings: Mapping[str, Any] | None = None,
               skipped: Mapping[str, str] | None = None, engine: Mapping[str, Any] | None = None) -> "SweepDirectory":
        """A new sweep in ``path`` (new or empty): ``settings`` records what the trials came from."""
        path = Path(path).resolve()
        check_unique(trials)
        if (path / SWEEP).is_file():
            raise RunDirectoryError(f"{path} already holds a sweep; continue it with `lmaas-tune sweep --resume {path}`, "
                                    f"or choose another --output")
        if path.exists() and (not path.is_dir() or any(not p.name.startswith(".") for p in path.iterdir())):
            raise RunDirectoryError(f"{path} is not empty and holds no sweep (no {SWEEP}); choose a new or empty --output")
        try:
            (path / TRIALS).mkdir(parents=True, exist_ok=True)
            (path / ATTEMPTS).mkdir(exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(f"cannot create {path} ({exc.strerror or exc}); choose another --output") from None
        doc = {"version": FORMAT, "settings": dict(settings or {}), "skipped": dict(skipped or {}),
               "engine": dict(engine or {}), "trials": [t.to_dict() for t in trials]}
        atomic_write(path / SWEEP, (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode())
        return cls(path, doc)

    @classmethod
    def open(cls, path: str | Path) -> "SweepDirectory":
        path = Path(path).resolve()
        file = path / SWEEP
        if not file.is_file():
            raise RunDirectoryError(f"{path} is not a sweep directory (no {SWEEP}); pass the --output of a sweep")
        try:
            doc = json.loads(file.read_text("utf-8"))
            if int(doc.get("version", FORMAT)) != FORMAT:
                raise RunDirectoryError(f"{file} has format {doc.get('version')}; this lmaas-tune reads format {FORMAT}")
            return cls(path, doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise RunDirectoryError(f"{file} is corrupt ({type(exc).__name__}: {exc})") from None

    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / SWEEP).is_file()

    @property
    def settings(self) -> Mapping[str, Any]:
        return self._doc.get("settings") or {}

    @property
    def skipped(self) -> Mapping[str, str]:
        """Tasks the grid named that could not run here, and why."""
        return self._doc.get("skipped") or {}

    @property
    def engine(self) -> Mapping[str, Any]:
        """How the sweep was started (per-trial resources, concurrency, tracking): a resume's defaults."""
        return self._doc.get("engine") or {}

    def run_dir(self, trial_id: str) -> Path:
        return self.path / TRIALS / trial_id

    def finished(self, trial_id: str) -> bool:
        return (self.run_dir(trial_id) / RESULT).is_file()

    def attempts(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's attempt log (a torn last line from a crash is left out)."""
        p = self.path / ATTEMPTS / f"{trial_id}.jsonl"
        if not p.is_file():
            return []
        out = []
        for line in p.read_text("utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def log_attempt(self, trial_id: str, record: Mapping[str, Any]) -> None:
        with (self.path / ATTEMPTS / f"{trial_id}.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(dict(record), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
