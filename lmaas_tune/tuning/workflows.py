"""The jobs the CLI runs, as library calls: zero-shot evaluation, tuning, resuming a stopped run,
and re-scoring a saved run."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend, BackendInfo
from .backends.factory import BackendSettings, open_backend
from .config import TuneConfig
from .errors import ConfigError, RunDirectoryError
from .evaluation import Evaluation, evaluate_prompt
from .deep_projection import DeepProjectionSpec, build_projection, spec_from_dict
from .projection import ProjectionSpec
from .runs import RunDirectory
from .tasks.data import TableSource, resolve_path
from .tasks.spec import TaskSpec
from .tasks.task import Task
from .tuner import BlackBoxTuner, Event, FitResult

Progress = Callable[[int, int], None]


async def zero_shot(spec: TaskSpec, backend: Backend, *, progress: Progress | None = None,
                    on_long: str = "drop") -> Evaluation:
    """The manual template (no soft prompt) on the task's test set."""
    task = spec.build()
    return await evaluate_prompt(backend, task, task.load("test"), None, progress=progress, on_long=on_long)


def model_record(info: BackendInfo) -> dict[str, Any]:
    """What a run directory records about its model (checked again when the run is resumed)."""
    return {"id": info.model_id, "kind": info.kind.value, "hidden_size": info.hidden_size,
            "dtype": info.dtype, "device": info.device}


def check_same_model(stored: dict[str, Any], info: BackendInfo, where: str) -> None:
    """Refuse a backend whose model is not the one ``stored`` describes (the device may differ)."""
    now = model_record(info)
    diff = [f"{k} {stored[k]!r} vs {now[k]!r}" for k in ("id", "kind", "hidden_size", "dtype")
            if k in stored and stored[k] != now[k]]
    if diff:
        raise ConfigError(f"{where} was tuned on another model than this backend serves ({'; '.join(diff)}); "
                          f"use the same model (and --dtype) the run used")


def data_fingerprint(task: Task) -> dict[str, str] | None:
    """SHA-256 of the task's train and test files (``None`` for hub datasets)."""
    src = task.source
    if not isinstance(src, TableSource):
        return None
    out = {}
    for split, location in (("train", src.train), ("test", src.test)):
        try:
            out[split] = hashlib.sha256(resolve_path(location).read_bytes()).hexdigest()
        except OSError:  # the data readers report a missing or unreadable file, with its fix
            continue
    return out


async def fit(
    spec: TaskSpec,
    backend: Backend,
    settings: BackendSettings,
    config: TuneConfig,
    *,
    output: str | Path | None,
    callbacks: Sequence[Callable[[Event], None]] = (),
    concurrency: int | None = None,
    baseline: bool = True,
) -> FitResult:
    """Tune a prompt with Black-Box Tuning and record the run in ``output``.

    With ``baseline``, the manual template alone is scored on the same test set too.
    """
    task = spec.build()
    run_info = {"version": 1, "task": spec.to_dict(), "backend": settings.to_dict(),
                "model": model_record(backend.info), "baseline": baseline, "data": data_fingerprint(task)}
    tuner = BlackBoxTuner(task, backend, config, run_dir=output, run_info=run_info,
                          callbacks=callbacks, concurrency=concurrency, evaluate_manual=baseline)
    return await tuner.fit()


async def resume(
    run_dir: str | Path,
    backend: Backend,
    *,
    callbacks: Sequence[Callable[[Event], None]] = (),
    concurrency: int | None = None,
) -> FitResult:
    """Continue the run in ``run_dir`` from its last checkpoint, with its stored task and settings.

    Refused when ``backend`` serves another model, or the task's data files changed since the run
    started. A finished run just returns its recorded result.
    """
    run = RunDirectory.open(run_dir)
    stored = run.config
    tuner = BlackBoxTuner.from_run_dir(run.path, backend, callbacks=callbacks, concurrency=concurrency)
    if not run.finished:
        if "model" in stored:
            check_same_model(stored["model"], backend.info, str(run.path))
        recorded = stored.get("data")
        if recorded:
            now = data_fingerprint(tuner.task) or {}
            changed = [split for split in recorded if now.get(split) != recorded[split]]
            if changed:
                raise RunDirectoryError(
                    f"the {' and '.join(changed)} file(s) of {run.path} changed since the run started "
                    f"(SHA-256 differs); restore them to resume, or start a new run"
                )
    return await tuner.fit(resume=True)


def stored_settings(run_dir: str | Path) -> tuple[TaskSpec, TuneConfig, BackendSettings, dict[str, Any]]:
    """The task spec, tuning settings, backend settings and whole config a run directory stores."""
    run = RunDirectory.open(run_dir)
    cfg = run.config
    try:
        return (TaskSpec.from_dict(cfg["task"]), TuneConfig.from_dict(cfg["tune"]),
                BackendSettings.from_dict(cfg["backend"]), cfg)
    except (KeyError, TypeError) as exc:
        raise RunDirectoryError(f"{run.path / 'config.json'} does not describe a fit ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class SavedRun:
    """A run directory read back: its task spec, backend settings and best prompt."""

    run: RunDirectory
    task: TaskSpec
    settings: BackendSettings
    projection: ProjectionSpec | DeepProjectionSpec
    z: np.ndarray
    recorded_test: dict[str, Any] | None
    initial_prompt: np.ndarray | None = None  # p0 (None: zeros)

    @classmethod
    def load(cls, path: str | Path) -> "SavedRun":
        run = RunDirectory.open(path)
        cfg, best = run.config, run.best
        recorded = run.result.get("test") if (run.path / "result.json").exists() else None
        return cls(run, TaskSpec.from_dict(cfg["task"]), BackendSettings.from_dict(cfg["backend"]),
                   spec_from_dict(best["projection"]), np.asarray(best["z"], dtype=np.float64), recorded,
                   run.initial_prompt)

    def prompt(self) -> np.ndarray:
        """The best soft prompt (``[L, D]``, or ``[layers, L, D]`` for a deep run), rebuilt from z, the
        projection spec and the run's initial prompt."""
        return build_projection(self.projection, self.initial_prompt)(self.z)[0]


async def evaluate_run(
    saved: SavedRun, backend: Backend | None = None, *, progress: Progress | None = None, on_long: str = "drop"
) -> Evaluation:
    """Score a saved run's best prompt on its task's test set."""
    task = saved.task.build()
    own = backend is None
    backend = backend or open_backend(saved.settings)
    try:
        model = saved.run.config.get("model")
        if model:
            check_same_model(model, backend.info, str(saved.run.path))
        return await evaluate_prompt(backend, task, task.load("test"), saved.prompt(), progress=progress, on_long=on_long)
    finally:
        if own:
            await backend.aclose()
