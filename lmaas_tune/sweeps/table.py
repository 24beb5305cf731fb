"""A sweep read back from its directory: one :class:`TrialOutcome` per trial, one :class:`SweepRow`
per task x method (x any other grid axis), mean and standard deviation over seeds.

Everything here is read from the sweep directory (its trials' run directories and attempt
logs), so the table of a running, stopped or finished sweep is always the one its files say.
Means and standard deviations are over the finished trials of a row; the standard deviation is
the sample one (n - 1), ``None`` for a single trial. :meth:`SweepTable.to_json`, :meth:`to_csv`
and :meth:`to_markdown` write the formats ``lmaas-tune report`` prints.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmaas_tune.runs.record import RunConfig
from lmaas_tune.runs.reports import read_run

from .directory import SweepDirectory


@dataclass(frozen=True)
class TrialOutcome:
    """One trial as its files tell it. Scores are ``None`` until it finished."""

    id: str
    task: str
    method: str
    seed: int
    variant: str  # the grid's other axes (``budget=200``), "" when only task, method and seed vary
    status: str  # finished, failed, interrupted, running, new (started, nothing scored) or pending (never started)
    error: str | None  # a failed trial's one-line error
    run_dir: str
    metric: str | None
    test: float | None
    manual_test: float | None
    dev: float | None
    calls: int
    wall_time_s: float | None
    attempts: int  # times a worker started it
    node_id: str | None  # where its last attempt ran
    host: str | None
    pid: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SweepRow:
    """One task x method (x variant) over its seeds."""

    task: str
    method: str
    variant: str
    metric: str | None
    seeds: tuple[int, ...]
    finished: int
    failed: int
    test_mean: float | None
    test_std: float | None
    manual_mean: float | None  # the manual prompt on the same test set
    dev_mean: float | None
    calls_mean: float | None
    wall_time_s_mean: float | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d


@dataclass(frozen=True)
class SweepTable:
    """A sweep's rows and trials, the tasks its grid named that could not run here, and where it is tracked."""

    path: Path
    rows: tuple[SweepRow, ...]
    trials: tuple[TrialOutcome, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)
    mlflow: str | None = None  # the tracking URI the sweep logs to

    def to_dict(self) -> dict[str, Any]:
        return {"sweep_dir": str(self.path), "rows": [r.to_dict() for r in self.rows],
                "trials": [t.to_dict() for t in self.trials], "skipped": dict(self.skipped), "mlflow": self.mlflow}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """The rows, one line each, numbers unrounded."""
        buf = io.StringIO()
        names = [f for f in SweepRow.__dataclass_fields__]
        writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            d = row.to_dict()
            d["seeds"] = " ".join(str(s) for s in row.seeds)
            writer.writerow({k: "" if v is None else v for k, v in d.items()})
        return buf.getvalue()

    def to_markdown(self) -> str:
        """The rows as a Markdown table, scores in percent (mean ± std over seeds)."""
        lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(cells(r)) + " |" for r in self.rows]
        failed = [t for t in self.trials if t.status == "failed"]
        lines += [""] + [f"- {t.id} failed: {t.error}" for t in failed] if failed else []
        lines += [""] + [f"- {why}" for why in self.skipped.values()] if self.skipped else []
        return "\n".join(lines) + "\n"


HEADERS = ("task", "method", "metric", "test % (mean ± std)", "manual prompt %", "dev %", "seeds", "calls",
           "wall time")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def cells(row: SweepRow) -> list[str]:
    """A row as the table shows it (the columns of :data:`HEADERS`)."""
    test = _pct(row.test_mean) + ("" if row.test_std is None else f" ± {100 * row.test_std:.2f}")
    method = row.method + (f" {row.variant}" if row.variant else "")
    seeds = f"{row.finished}/{len(row.seeds)}" + (f" ({row.failed} failed)" if row.failed else "")
    return [row.task, method, row.metric or "-", test, _pct(row.manual_mean), _pct(row.dev_mean), seeds,
            "-" if row.calls_mean is None else f"{row.calls_mean:.0f}",
            "-" if row.wall_time_s_mean is None else f"{row.wall_time_s_mean:.1f} s"]


def _mean(xs: Sequence[float | int | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def _std(xs: Sequence[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.stdev(vals) if len(vals) > 1 else None


def trial_outcomes(directory: SweepDirectory) -> tuple[TrialOutcome, ...]:
    out = []
    for trial in directory.trials:
        run_dir = directory.run_dir(trial.id)
        attempts = directory.attempts(trial.id)
        starts = [a for a in attempts if a.get("event") == "start"]
        last = attempts[-1] if attempts else {}
        here = starts[-1] if starts else {}
        variant = " ".join(f"{k}={v}" for k, v in trial.point.items() if k not in ("task", "method", "seed"))
        common: dict[str, Any] = dict(id=trial.id, task=trial.task.name, method=trial.method, seed=trial.tune.seed, variant=variant,
                      run_dir=str(run_dir), attempts=len(starts), node_id=here.get("node_id"), host=here.get("host"),
                      pid=here.get("pid"))
        finished = directory.finished(trial.id)
        if RunConfig.exists(run_dir):
            s = read_run(run_dir).summary
            status = s.status if finished or last.get("event") != "failed" else "failed"
            out.append(TrialOutcome(**common, status=status, error=None if finished else last.get("error"),
                                    metric=s.metric if finished else None, test=s.test, manual_test=s.manual_test,
                                    dev=s.best_dev, calls=s.calls, wall_time_s=s.wall_time_s))
        else:
            status = "failed" if last.get("event") == "failed" else ("running" if starts else "pending")
            out.append(TrialOutcome(**common, status=status, error=last.get("error") if status == "failed" else None,
                                    metric=None, test=None, manual_test=None, dev=None, calls=0, wall_time_s=None))
    return tuple(out)


def rows(trials: Sequence[TrialOutcome]) -> tuple[SweepRow, ...]:
    groups: dict[tuple[str, str, str], list[TrialOutcome]] = {}
    for t in trials:
        groups.setdefault((t.task, t.method, t.variant), []).append(t)
    out = []
    for (task, method, variant), group in groups.items():
        done = [t for t in group if t.status == "finished"]
        out.append(SweepRow(
            task=task, method=method, variant=variant, metric=next((t.metric for t in done), None),
            seeds=tuple(t.seed for t in group), finished=len(done), failed=sum(t.status == "failed" for t in group),
            test_mean=_mean([t.test for t in done]), test_std=_std([t.test for t in done]),
            manual_mean=_mean([t.manual_test for t in done]), dev_mean=_mean([t.dev for t in done]),
            calls_mean=_mean([t.calls for t in done]), wall_time_s_mean=_mean([t.wall_time_s for t in done]),
        ))
    return tuple(out)


def read_sweep(path: str | Path | SweepDirectory) -> SweepTable:
    """The table of the sweep in ``path`` (finished, running or stopped)."""
    directory = path if isinstance(path, SweepDirectory) else SweepDirectory.open(path)
    trials = trial_outcomes(directory)
    return SweepTable(directory.path, rows(trials), trials, dict(directory.skipped), directory.engine.get("mlflow"))
