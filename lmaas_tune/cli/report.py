"""``lmaas-tune report``: a table of runs and a PNG of their curves (a shell over :mod:`lmaas_tune.runs.reports`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lmaas_tune.errors import ConfigError
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.runs.reports import Plot, RunReport, plot_runs, read_runs
from lmaas_tune.sweeps import SweepDirectory, read_sweep
from .app import app, handled, out
from .sweep import show


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _table(reports: tuple[RunReport, ...], plot: Plot | None) -> None:
    table = Table(title="runs")
    for col in ("run", "task", "model", "method", "seed", "calls", "best train loss", "best dev", "test",
                "manual", "wall time", "calls/s", "retries", "status"):
        table.add_column(col, justify="left" if col in ("run", "task", "model", "method", "status") else "right")
    for r in reports:
        s = r.summary
        budget = f"/{s.budget}" if s.budget is not None else ""
        table.add_row(
            escape(r.series.label), escape(s.task), escape(Path(s.model).name or s.model), s.method,
            "-" if s.seed is None else str(s.seed), f"{s.calls}{budget}", _num(s.best_train_loss),
            _num(s.best_dev), _num(s.test), _num(s.manual_test),
            "-" if s.wall_time_s is None else f"{s.wall_time_s:.1f} s", _num(s.calls_per_s, ".2f"),
            str(s.retries), s.status,
        )
    out.print(table)
    if plot is not None:
        out.print(f"plot: {plot.path} ({plot.width}x{plot.height} px)", highlight=False)


def _json(reports: tuple[RunReport, ...], plot: Plot | None) -> None:
    payload = {"runs": [{**r.summary.to_dict(), "series": r.series.to_dict()} for r in reports],
               "plot": None if plot is None else str(plot.path)}
    out.print_json(json.dumps(payload))


FORMATS: dict[str, Callable[[tuple[RunReport, ...], Plot | None], None]] = {"table": _table, "json": _json}


@app.command("report")
@handled
def report_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories from `fit` (finished or not), or one sweep directory.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"Output: {' or '.join(FORMATS)} (for machines); a sweep also csv or markdown.")] = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the PNG of the curves (default: report.png; for a sweep, report.png in its directory).")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write the PNG (best train loss and dev metric against calls).")] = True,
) -> None:
    """Summarise runs in a table (task, model, budget used, best train/dev/test, time, calls/s, retries) and plot
    them; for a sweep directory, its table (task x method over seeds) and every trial's curve."""
    if len(run_dirs) == 1 and SweepDirectory.exists(run_dirs[0]):
        return _sweep_report(run_dirs[0], fmt, output, plot)
    show_runs = FORMATS.get(fmt)
    if show_runs is None:
        raise ConfigError(f"--format must be {' or '.join(FORMATS)}; got {fmt!r}")
    reports = read_runs(run_dirs)
    drawn = plot_runs(reports, output or Path("report.png")) if plot else None
    show_runs(reports, drawn)


def _sweep_report(path: Path, fmt: str, output: Path | None, plot: bool) -> None:
    table = read_sweep(path)
    started = [Path(t.run_dir) for t in table.trials if RunConfig.exists(Path(t.run_dir))]
    drawn = plot_runs(read_runs(started), output or table.path / "report.png") if plot and started else None
    show(table, fmt)
    if drawn is not None and fmt == "table":
        out.print(f"plot: {drawn.path} ({drawn.width}x{drawn.height} px)", highlight=False)
