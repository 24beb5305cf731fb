"""Run directories read back for people: one summary per run, the curves worth plotting, a PNG.

:func:`read_run` reads what a run directory holds (its record, ``history.jsonl``,
``result.json``, the ledger in ``checkpoint.json``; see :mod:`lmaas_tune.runs.directory`) into a
:class:`RunReport`: a :class:`RunSummary` (the numbers a table shows) and a :class:`RunSeries`
(best train loss and dev metric against calls used). It works on finished runs and on runs still
going or stopped. :func:`plot_runs` draws the series of several runs, one line per run, into a PNG
with matplotlib's Agg renderer (imported on first use, no pyplot, no global state) and returns
the data it plotted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmaas_tune.errors import RunDirectoryError
from .directory import RESULT, RunDirectory

CHECKPOINT = "checkpoint.json"  # the name lmaas_tune.runs.checkpoint writes (not imported: it pulls in numpy and pycma)


@dataclass(frozen=True)
class RunSummary:
    """One run in numbers. ``None``: not known yet (an unfinished run has no test score)."""

    run_dir: str
    task: str
    model: str
    method: str
    seed: int | None
    status: str  # finished, interrupted, running or new (nothing scored yet)
    metric: str
    budget: int | None
    calls: int
    best_train_loss: float | None  # the lowest train loss of any candidate
    best_train_accuracy: float | None  # the best train accuracy of a generation's best candidate
    best_dev: float | None
    test: float | None
    manual_test: float | None  # the manual template alone, when the fit scored it too
    wall_time_s: float | None  # the whole fit when finished (test scoring included), else tuning so far
    calls_per_s: float | None  # charged calls per second of tuning
    retries: int  # retries on the way, those of dropped (re-run) generations included

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunSeries:
    """A run's curves: best train loss so far after each generation, dev metric at each check."""

    label: str
    calls: tuple[int, ...]
    best_loss: tuple[float, ...]
    dev_calls: tuple[int, ...]
    dev: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RunReport:
    summary: RunSummary
    series: RunSeries


def _float(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _optional_json(run: RunDirectory, name: str) -> Any:
    return run.read_json(name) if (run.path / name).is_file() else None


def _status(result: Any, checkpoint: Any) -> str:
    if result is not None:
        return "finished"
    if isinstance(checkpoint, dict):
        return str(checkpoint.get("status", "running"))
    return "new"


def read_run(path: str | Path, *, label: str | None = None) -> RunReport:
    """The summary and curves of the run in ``path`` (``label`` names it in plots; default: its directory name)."""
    run = RunDirectory.open(path)
    record, history = run.record, run.history()
    result, checkpoint = _optional_json(run, RESULT), _optional_json(run, CHECKPOINT)
    tune = record.tune
    task = record.task.name if record.task is not None else "-"
    model = (record.model.id if record.model is not None else None) or (record.backend.model if record.backend else "-")
    ledger = (result or {}).get("ledger") or (checkpoint or {}).get("ledger") or {}
    discarded = (checkpoint or {}).get("discarded") or {}
    last = history[-1] if history else {}
    losses = [x for x in (_float(h.get("best_loss")) for h in history) if x is not None]
    train_acc = [float(h["train_accuracy"]) for h in history if h.get("train_accuracy") is not None]
    checks = [(int(h["calls"]), float(h["dev_metric"])) for h in history if h.get("dev_metric") is not None]
    test = (result or {}).get("test") or None
    manual = (result or {}).get("manual_prompt_test") or None
    if result is not None:
        best_dev, wall = _float(result.get("dev")), _float(result.get("wall_time_s"))
    else:
        best_dev, wall = max((v for _, v in checks), default=None), _float(last.get("elapsed"))
    try:
        summary = RunSummary(
            run_dir=str(run.path), task=str(task), model=str(model), method=tune.method,
            seed=tune.seed, status=_status(result, checkpoint),
            metric=str((result or {}).get("metric") or (test or {}).get("metric") or "accuracy"),
            budget=tune.budget, calls=int(last.get("calls", ledger.get("calls", 0))),
            best_train_loss=min(losses, default=None), best_train_accuracy=max(train_acc, default=None),
            best_dev=best_dev, test=_float(test["value"]) if test else None,
            manual_test=_float(manual["value"]) if manual else None, wall_time_s=wall,
            calls_per_s=_float(last.get("calls_per_s")),
            retries=int(ledger.get("retries", 0)) + int(discarded.get("retries", 0)),
        )
        series = RunSeries(
            label=label or run.path.name, calls=tuple(int(h["calls"]) for h in history),
            best_loss=tuple(_float(h.get("best_loss")) or math.nan for h in history),
            dev_calls=tuple(c for c, _ in checks), dev=tuple(v for _, v in checks),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirectoryError(f"{run.path} holds a record this report cannot read ({type(exc).__name__}: {exc})") from None
    return RunReport(summary, series)


def read_runs(paths: Sequence[str | Path]) -> tuple[RunReport, ...]:
    """:func:`read_run` for each path; runs whose directory names collide are labelled by their full path."""
    names = [Path(p).name for p in paths]
    return tuple(read_run(p, label=Path(p).name if names.count(Path(p).name) == 1 else str(p)) for p in paths)


@dataclass(frozen=True)
class PlottedLine:
    """One line as drawn: its legend label and the exact x and y data handed to matplotlib."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    lines: tuple[PlottedLine, ...]


@dataclass(frozen=True)
class Plot:
    """What :func:`plot_runs` wrote: the PNG, its size in pixels, and each panel's lines."""

    path: Path
    width: int
    height: int
    panels: tuple[Panel, ...]


def plot_runs(reports: Sequence[RunReport], output: str | Path, *, dpi: int = 100) -> Plot:
    """Best train loss and dev metric against calls used, one line per run, side by side in a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not reports:
        raise RunDirectoryError("no runs to plot; pass at least one run directory")
    metrics = sorted({r.summary.metric for r in reports})
    fig = Figure(figsize=(11, 4.2), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    loss_ax, dev_ax = fig.subplots(1, 2)
    panels = []
    for ax, title, ylabel in ((loss_ax, "best train loss", "lowest train loss so far"),
                              (dev_ax, "dev " + "/".join(metrics), "dev " + "/".join(metrics) + " at each check")):
        for r in reports:
            s = r.series
            xs, ys = (s.calls, s.best_loss) if ax is loss_ax else (s.dev_calls, s.dev)
            if xs:
                ax.plot(xs, ys, label=s.label, marker="" if ax is loss_ax else "o", markersize=4)
        ax.set_title(title)
        ax.set_xlabel("calls used")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
        lines = tuple(PlottedLine(str(line.get_label()), tuple(float(v) for v in line.get_xdata()),
                                  tuple(float(v) for v in line.get_ydata()))
                      for line in ax.get_lines())
        panels.append(Panel(title, ylabel, lines))
    path = Path(output)
    if path.parent and not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    canvas.draw()
    width, height = (int(v) for v in canvas.get_width_height())
    fig.savefig(path, format="png", dpi=dpi)
    return Plot(path, width, height, tuple(panels))
