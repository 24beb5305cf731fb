"""MLflow tracking: each trial becomes an MLflow run when it ends, logged from the driver.

What is logged is read from the trial's run directory, so it is exactly what the directory holds:
its settings as params (task, method, seed, every tuning setting, backend and model, the grid
point), its history as metrics (best and mean train loss, train accuracy and dev metric per generation,
step = calls used), its result as final metrics (``test``, ``manual_test``, ``best_dev``,
``calls``, ``wall_time_s``), where it ran as tags, and the run directory itself as artifacts under
``run/``. One MLflow experiment per sweep, named after the sweep directory; a trial already logged
as finished is not logged again (a resumed sweep logs only what is new).

The default store is ``./mlruns``: MLflow's file store, which MLflow 3 keeps in maintenance mode and
refuses unless ``MLFLOW_ALLOW_FILE_STORE`` is true; this module sets that variable for a file
store when it is unset. Any other tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``) is
used as given. MLflow is imported here only (``pip install 'lmaas-tune[mlflow]'``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .directory import SweepDirectory
from .engine import require
from .trials import TrialSpec

TRIAL_TAG = "lmaas_tune.trial"
#: the history fields logged per generation (step = calls used)
HISTORY_METRICS = ("best_loss", "loss_mean", "train_accuracy", "dev_metric")
DEFAULT_URI = "./mlruns"


def tracking_uri(uri: str) -> str:
    """A local path becomes an absolute ``file:`` URI; any other URI is kept."""
    if "://" in uri or uri.startswith("file:"):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def _params(trial: TrialSpec) -> dict[str, str]:
    params = {"task": trial.task.name, "method": trial.method, "seed": trial.tune.seed,
              "backend": trial.backend.backend, "model": trial.backend.model}
    params.update({f"tune.{k}": v for k, v in trial.tune.to_dict().items()})
    params.update({f"grid.{k}": v for k, v in trial.point.items()})
    if trial.backend.endpoints:
        params["endpoints"] = ",".join(trial.backend.endpoints)
    return {k: str(v)[:500] for k, v in params.items()}


class MlflowTracker:
    """Logs the trials of one sweep to an MLflow tracking store."""

    def __init__(self, uri: str, directory: SweepDirectory) -> None:
        self.uri = tracking_uri(uri)
        if self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._mlflow = require("mlflow", "mlflow", "--mlflow")
        self.directory = directory
        self.client = self._mlflow.MlflowClient(tracking_uri=self.uri)
        self.experiment = f"lmaas-tune sweep {directory.path}"
        found = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)

    def logged(self) -> set[str]:
        """Trials already logged as finished runs."""
        runs = self.client.search_runs([self.experiment_id], "attributes.status = 'FINISHED'", max_results=10000)
        return {r.data.tags.get(TRIAL_TAG) for r in runs}

    def log(self, trial: TrialSpec, end: Mapping[str, Any]) -> str | None:
        """Log ``trial`` as it ended (``end``: the worker's last attempt record); the MLflow run id, or
        ``None`` when it is already there."""
        if end.get("event") == "finished" and trial.id in self.logged():
            return None
        entities = self._mlflow.entities
        run_dir = self.directory.run_dir(trial.id)
        tags = {TRIAL_TAG: trial.id, "lmaas_tune.status": str(end.get("event")), "lmaas_tune.run_dir": str(run_dir)}
        tags.update({f"lmaas_tune.{k}": str(end[k]) for k in ("node_id", "host", "pid", "error") if end.get(k)})
        run = self.client.create_run(self.experiment_id, run_name=trial.id, tags=tags)
        run_id = run.info.run_id
        metrics, stamp = [], int(1000 * time.time())
        for h in _history(run_dir):
            for key in HISTORY_METRICS:
                if h.get(key) is not None:
                    metrics.append(entities.Metric(key, float(h[key]), stamp, int(h["calls"])))
        result = _json(run_dir / "result.json")
        if result:
            final = {"test": (result.get("test") or {}).get("value"),
                     "manual_test": (result.get("manual_prompt_test") or {}).get("value"),
                     "best_dev": result.get("dev"), "calls": result.get("calls"), "wall_time_s": result.get("wall_time_s")}
            last = int(result.get("calls") or 0)
            metrics += [entities.Metric(k, float(v), stamp, last) for k, v in final.items() if v is not None]
        params = [entities.Param(k, v) for k, v in _params(trial).items()]
        for i in range(0, len(params), 100):  # MLflow's limits per batch: 100 params, 1000 metrics
            self.client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        if run_dir.is_dir():
            self.client.log_artifacts(run_id, str(run_dir), artifact_path="run")
        self.client.set_terminated(run_id, "FINISHED" if end.get("event") == "finished" else "FAILED")
        return str(run_id)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text("utf-8")))
    except (OSError, ValueError):
        return None


def _history(run_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (run_dir / "history.jsonl").read_text("utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
