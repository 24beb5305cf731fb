"""``lmaas-tune sweep``: a grid of fits on Ray, one run directory per trial, one table at the end.

A shell over :mod:`lmaas_tune.sweeps`. The grid comes from ``--tasks``, ``--seeds`` and
``--methods`` and from a TOML file (``--grid``: a ``[fit]`` table of settings for every trial and a
``[grid]`` table of lists, keyed by ``fit``'s option names); every other ``fit`` option applies to
every trial. Each point is turned into a fit exactly as ``fit`` turns its options into one (the
same option groups), so a sweep trial and a ``fit`` with the same options are the same run.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lmaas_tune.errors import ConfigError, LmaasTuneError, RunInterrupted
from lmaas_tune.sweeps import PAPER_SEEDS, PAPER_TASKS, SweepProgress, SweepTable, TrialSpec, expand, trial_id
from lmaas_tune.sweeps.runner import check_extras, resume_sweep, sweep
from lmaas_tune.sweeps.table import HEADERS, cells
from lmaas_tune.sweeps.trials import check_unique, unavailable
from lmaas_tune.sweeps.tracking import DEFAULT_URI
from lmaas_tune.tasks.catalog import TASKS

from .app import app, err, handled, out
from .options import BackendOptions, QuietOpt, TaskOptions, TuningOptions, grouped

GROUPS: dict[str, type] = {"task_opts": TaskOptions, "backend_opts": BackendOptions, "tuning": TuningOptions}
#: grid keys that name an axis in the plural
PLURAL = {"tasks": "task", "seeds": "seed", "methods": "method"}
FORMATS = ("table", "json", "csv", "markdown")
#: --preset paper-table: the paper's budgets where they differ from its 8000 calls
PAPER_BUDGETS = {"dbpedia": 20000}

FormatOpt = Annotated[str, typer.Option("--format", "-f", help=f"Output: {', '.join(FORMATS)}.")]


def show(table: SweepTable, fmt: str) -> None:
    """Print a sweep's table in ``fmt`` (one of :data:`FORMATS`) on stdout."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt != "table":
        text = {"json": table.to_json, "csv": table.to_csv, "markdown": table.to_markdown}[fmt]()
        out.print(text, end="" if text.endswith("\n") else "\n", markup=False, highlight=False, soft_wrap=True)
        return
    grid = Table(title=f"sweep {table.path}")
    for col in HEADERS:
        grid.add_column(col, justify="left" if col in ("task", "method", "metric") else "right")
    for row in table.rows:
        grid.add_row(*(escape(c) for c in cells(row)))
    out.print(grid)
    for t in table.trials:
        if t.status == "failed":
            out.print(f"{t.id} failed: {escape(t.error or 'no error recorded')}", highlight=False, soft_wrap=True)
        elif t.status != "finished":
            out.print(f"{t.id}: {t.status}", highlight=False)
    for why in table.skipped.values():
        out.print(f"left out: {escape(why)}", highlight=False, soft_wrap=True)


class ProgressLine:
    """Trials done, running, failed and the best dev so far: a rich bar on a terminal, else a plain
    line each time the counts change."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Progress | None = None
        self.last: tuple[int, int, int] | None = None

    def __enter__(self) -> "ProgressLine":
        if not self.quiet and err.is_terminal:
            self.bar = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err)
            self.bar.start()
            self.task = self.bar.add_task("trials", total=None, status="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, p: SweepProgress) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, total=p.total, completed=p.done + p.failed, status=p.describe())
            return
        counts = (p.done, p.running, p.failed)
        if counts != self.last:
            self.last = counts
            err.print(p.describe(), highlight=False, soft_wrap=True)


def _toml(path: Path) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The ``[fit]`` and ``[grid]`` tables of a grid file."""
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --grid {path} ({exc.strerror or exc}); check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--grid {path} is not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - {"fit", "grid"})
    if unknown:
        raise ConfigError(f"--grid {path} has table(s) {unknown}; it takes [fit] (settings for every trial) and "
                          f"[grid] (lists of values to vary)")
    return dict(doc.get("fit") or {}), {PLURAL.get(k, k): v for k, v in (doc.get("grid") or {}).items()}


def _fields() -> dict[str, str]:
    """Every fit setting a grid may name -> its option group."""
    return {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}


def _normalise(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    known = _fields()
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = PLURAL.get(key.replace("-", "_"), key.replace("-", "_"))
        name = {"compile": "compile_layers", "kind": "model_kind"}.get(name, name)
        if name not in known:
            raise ConfigError(f"{where} names {key!r}, which is no fit setting; use fit's option names "
                              f"(e.g. task, seed, method, budget, prompt_length, model)")
        if name == "task_file" and value is not None:  # a path, or a grid's list of paths
            value = [Path(v) for v in value] if isinstance(value, list) else Path(value)
        out[name] = value
    return out


def _with(groups: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The option groups with ``settings`` (field -> value) put in."""
    known = _fields()
    return {g: dataclasses.replace(obj, **{k: v for k, v in settings.items() if known[k] == g})
            for g, obj in groups.items()}


def build_trials(groups: dict[str, Any], axes: Mapping[str, list[Any]], baseline: bool) -> list[TrialSpec]:
    """One trial per grid point, each composed from the option groups as ``fit`` composes its run.

    A point is named by its task's name, method and seed and its other axes (a task file by the name
    of the task it holds)."""
    trials = []
    for point in expand(axes) if axes else [{}]:
        g = _with(groups, point)
        spec, config, settings = g["task_opts"].spec(), g["tuning"].config(), g["backend_opts"].settings()
        named = {"task": spec.name, "method": g["tuning"].method or "bbt", "seed": config.seed,
                 **{k: v for k, v in point.items() if k not in ("task", "method", "seed", "task_file")}}
        trials.append(TrialSpec(trial_id(named), spec, config, settings, baseline, named))
    check_unique(trials)
    return trials


def _split(text: str | None, cast: Callable[[str], Any] = str) -> list[Any] | None:
    if text is None:
        return None
    try:
        return [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected a comma-separated list of numbers; got {text!r}") from None


@app.command("sweep")
@handled
@grouped(**GROUPS)
def sweep_cmd(
    task_opts: TaskOptions,
    backend_opts: BackendOptions,
    tuning: TuningOptions,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Tasks to sweep, comma-separated (e.g. sst2,agnews). --preset paper-table: the paper's seven.")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Seeds, comma-separated (e.g. 42,43,44).")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="Method presets, comma-separated (e.g. bbt,bbtv2).")] = None,
    grid_file: Annotated[Optional[Path], typer.Option("--grid", help="TOML: a \\[fit] table of settings for every trial, a \\[grid] table of lists of values to vary (fit's option names); options given here win.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Sweep directory (default: sweeps/TIME); each trial's run directory is trials/ID in it.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the stopped sweep in this directory: runs only its unfinished trials, each from its checkpoint. Takes the Ray and tracking options, and --endpoint, --token-env and --device (where the trials run); no option that changes a trial.")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: a local Ray on this machine's cores). Every node must see the sweep directory at the same path.")] = None,
    cpus_per_trial: Annotated[Optional[float], typer.Option("--cpus-per-trial", help="CPUs each trial reserves (torch gets as many threads); default 1.")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option("--gpus-per-trial", help="GPUs each trial reserves (fractions share one); default 0.")] = None,
    max_concurrent: Annotated[Optional[int], typer.Option("--max-concurrent", help="At most this many trials at once (default: as many as the resources allow).")] = None,
    max_retries: Annotated[Optional[int], typer.Option("--max-retries", help="Times a trial whose worker died is run again, from its checkpoint; default 3.")] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow", help=f"Log each trial to MLflow (default store {DEFAULT_URI}; needs the mlflow extra).")] = False,
    mlflow_uri: Annotated[Optional[str], typer.Option("--mlflow-uri", help="MLflow tracking URI or directory (implies --mlflow).")] = None,
    baseline: Annotated[Optional[bool], typer.Option("--baseline/--no-baseline", help="Also score the manual prompt in each trial (default: yes).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the trials (one id a line) and the tasks left out, and stop: nothing runs, nothing is written.")] = False,
    quiet: QuietOpt = False,
    fmt: FormatOpt = "table",
) -> None:
    """Run a grid of fits on Ray (tasks x methods x seeds, or a TOML grid), one run directory per trial; print
    task x method, mean ± std over seeds, beside the manual prompt. --preset paper-table: the paper's 7 tasks x 3 seeds."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    uri = mlflow_uri or (DEFAULT_URI if mlflow else None)
    if not dry_run:
        check_extras(uri)
    progress = ProgressLine(quiet or fmt != "table")
    groups: dict[str, Any] = {"task_opts": task_opts, "backend_opts": backend_opts, "tuning": tuning}
    engine: dict[str, Any] = dict(address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                                  max_concurrent=max_concurrent, max_retries=max_retries, mlflow=uri)
    if resume is not None:
        movable = {"endpoint", "token_env", "device"}  # where the trials run, not what they compute
        given = [f"--{f.replace('_', '-')}" for g in groups.values() for f, v in dataclasses.asdict(g).items()
                 if v not in (None, False) and f not in movable]
        given += [opt for opt, v in (("--tasks", tasks), ("--seeds", seeds), ("--methods", methods),
                                     ("--grid", grid_file), ("--output", output), ("--baseline", baseline)) if v is not None]
        if given:
            raise ConfigError(f"--resume continues {resume} with its stored trials, but {', '.join(given)} would change "
                              f"them; drop {'that option' if len(given) == 1 else 'those options'}, or start a new sweep")
        _note(quiet, f"resume sweep {resume}")
        b = backend_opts
        return _finish(lambda: resume_sweep(resume, progress=progress, endpoints=b.endpoint, token_env=b.token_env,
                                            device=b.device, **engine), resume, progress, fmt)

    shared, axes = _toml(grid_file) if grid_file else ({}, {})
    shared, axes = _normalise(shared, f"[fit] of {grid_file}"), _normalise(axes, f"[grid] of {grid_file}")
    known = _fields()
    groups = {g: dataclasses.replace(obj, **{k: v for k, v in shared.items() if known[k] == g
                                             and getattr(obj, k) in (None, False)})
              for g, obj in groups.items()}
    paper = groups["tuning"].preset == "paper-table"
    if paper:
        groups["tuning"] = dataclasses.replace(groups["tuning"], preset="paper")
        axes.setdefault("task", list(PAPER_TASKS))
        axes.setdefault("seed", list(PAPER_SEEDS))
    for axis, listed, cast in (("task", tasks, str), ("seed", seeds, int), ("method", methods, str)):
        values = _split(listed, cast)
        if values is not None:
            axes[axis] = values
        if axis in axes:
            single = {"task": groups["task_opts"].task, "seed": groups["tuning"].seed,
                      "method": groups["tuning"].method}[axis]
            if single is not None:
                raise ConfigError(f"give --{axis} or a list of {axis}s (--{axis}s, or [grid] {axis}), not both")
    for k, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"the grid's {k} must be a non-empty list of values; got {values!r}")
    skipped: dict[str, str] = {}
    if "task" in axes:
        for name in [t for t in axes["task"] if isinstance(t, str) and t in TASKS]:
            why = unavailable(TASKS.canonical(name))
            if why is not None:
                skipped[name] = why
        axes["task"] = [t for t in axes["task"] if t not in skipped]
        for why in skipped.values():
            err.print(f"[yellow]left out[/] {escape(why)}", highlight=False, soft_wrap=True)
        if not axes["task"]:
            raise ConfigError("no task of the grid can run here (see above); pick tasks with shipped data")
    trials = build_trials(groups, axes, True if baseline is None else baseline)
    if paper and groups["tuning"].budget is None and "budget" not in axes:  # the paper gives DBPedia a larger budget
        trials = [dataclasses.replace(t, tune=dataclasses.replace(t.tune, budget=PAPER_BUDGETS[t.task.name]))
                  if t.task.name in PAPER_BUDGETS else t for t in trials]
    if dry_run:
        for t in trials:
            out.print(f"{t.id}  {t.task.name} {t.method} seed={t.tune.seed} L={t.tune.prompt_length} "
                      f"d={t.tune.intrinsic_dim} popsize={t.tune.popsize} budget={t.tune.budget}", highlight=False,
                      markup=False, soft_wrap=True)
        return
    if output is None:
        output = Path("sweeps") / datetime.now().strftime("%Y%m%d-%H%M%S")
    settings = {"axes": axes, "shared": {k: str(v) if isinstance(v, Path) else v for g in groups.values()
                                         for k, v in dataclasses.asdict(g).items() if v not in (None, False)},
                "preset": "paper-table" if paper else None}
    _note(quiet, f"sweep of {len(trials)} trial(s) -> {output}")
    engine = {k: _DEFAULTS[k] if v is None and k in _DEFAULTS else v for k, v in engine.items()}
    _finish(lambda: sweep(trials, output, progress=progress, settings=settings, skipped=skipped, **engine),
            output, progress, fmt)


_DEFAULTS = {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "max_retries": 3}


def _note(quiet: bool, message: str) -> None:
    if not quiet:
        err.print(escape(message), highlight=False, soft_wrap=True)


def _finish(job: Callable[[], SweepTable], sweep_dir: Path, progress: ProgressLine, fmt: str) -> None:
    try:
        with progress:
            table = job()
    except KeyboardInterrupt:
        exc = RunInterrupted(2)
        exc.hint = f"finished trials are kept; continue the others with: lmaas-tune sweep --resume {sweep_dir}"
        raise exc from None
    except LmaasTuneError as exc:
        if exc.exit_code != 2 and (Path(sweep_dir) / "sweep.json").is_file():
            exc.hint = f"continue the sweep with: lmaas-tune sweep --resume {sweep_dir}"
        raise
    show(table, fmt)
    if table.mlflow:
        err.print(f"MLflow: {escape(table.mlflow)} (experiment 'lmaas-tune sweep {escape(str(table.path))}')",
                  highlight=False, soft_wrap=True)
    failed = [t for t in table.trials if t.status == "failed"]
    if failed:
        err.print(f"[bold red]{len(failed)} of {len(table.trials)} trial(s) failed[/] (see above); fix the cause and "
                  f"run them again with: lmaas-tune sweep --resume {escape(str(sweep_dir))}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(1)
