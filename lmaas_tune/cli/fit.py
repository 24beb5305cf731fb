"""``lmaas-tune fit`` (tune a prompt) and ``lmaas-tune resume RUN_DIR`` (continue a stopped fit).

``resume`` takes only the options that cannot change a run's result: where and how fast it runs.
``fit --resume RUN_DIR`` is the same command; any other ``fit`` option given with it must agree
with the stored run, which :func:`refusals` checks by building the run this command line describes
with the stored record filling in what it leaves out, the same way a new fit is built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lmaas_tune.backends.factory import SERVICES
from lmaas_tune.errors import ConfigError, LmaasTuneError, RemoteError, RunInterrupted
from lmaas_tune.methods import TuneConfig
from lmaas_tune.runs import checkpoint
from lmaas_tune.runs.directory import RunDirectory
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.runs.results import FitResult, stored_result
from lmaas_tune.tuning import workflows

from .app import app, err, handled, out
from .display import Display
from .interrupts import run_until_signal
from .loading import open_with_notes
from .options import (
    BackendOptions, CompileOpt, ConcurrencyOpt, DeviceOpt, EndpointOpt, JsonOpt, QuietOpt, TaskOptions, TokenEnvOpt,
    TuningOptions, grouped,
)

ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue the stopped run in this directory (the same as `lmaas-tune resume RUN_DIR`): only --device, --compile, --concurrency, --endpoint, --token-env, --quiet and --json may change; a finished run just shows its result.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Run directory (default: runs/TASK-MODEL-sSEED-TIME).")]
BaselineOpt = Annotated[Optional[bool], typer.Option("--baseline/--no-baseline", help="Also score the manual prompt on the test set, for comparison (default: yes).")]


@app.command("fit")
@handled
@grouped(task_opts=TaskOptions, backend_opts=BackendOptions, tuning=TuningOptions)
def fit_cmd(
    task_opts: TaskOptions,
    backend_opts: BackendOptions,
    tuning: TuningOptions,
    output: OutputOpt = None,
    resume: ResumeOpt = None,
    concurrency: ConcurrencyOpt = None,
    baseline: BaselineOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Tune a soft prompt with Black-Box Tuning (CMA-ES over a random projection), or continue a stopped run."""
    if resume is not None:
        run = RunDirectory.open(resume)
        listed = refusals(run.record, task_opts, backend_opts, tuning, baseline, output, resume)
        if listed:
            raise ConfigError(f"--resume continues {resume} with its stored settings, but {'; '.join(listed)}; drop "
                              f"{'that option' if len(listed) == 1 else 'those options'}, or start a new run "
                              f"with another --output")
        b = backend_opts
        return _resume(run, b.device, b.compile_layers, concurrency, b.endpoint, b.token_env, quiet, json_out)
    display = Display(err, quiet=quiet or json_out)
    spec, config, settings = task_opts.spec(), tuning.config(), backend_opts.settings()
    if output is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        output = Path("runs") / f"{spec.name}-{Path(settings.model).stem}-s{config.seed}-{stamp}"
    display.note(
        f"fit {spec.name} ({config.method}{_method_note(config)}): L={config.prompt_length} "
        f"d={config.intrinsic_dim} popsize={config.popsize} "
        f"sigma={config.sigma0} budget={config.budget} loss={config.loss} {config.k_shot}-shot seed={config.seed} -> {output}"
    )
    run_dir = output
    ours = not RunConfig.exists(run_dir)  # a hint may only point at this command's run

    async def job() -> FitResult:
        be = open_with_notes(settings, display)
        async with be:
            with display:
                return await workflows.fit(spec, be, settings, config, output=run_dir, callbacks=[display],
                                           concurrency=concurrency, baseline=True if baseline is None else baseline)

    _report_fit(_run_job(job(), run_dir, ours), json_out)


def _method_note(config: TuneConfig) -> str:
    note = f", CMA-ES for {config.cma_fraction:g} of the budget, then COBYLA" if config.optimizer == "cma-cobyla" else ""
    return note + (", dev checks also score CMA-ES's mean" if config.dev_candidates == "best+mean" else "")


@app.command("resume")
@handled
def resume_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The directory of a stopped `fit` (its --output).")],
    device: DeviceOpt = None,
    compile_layers: CompileOpt = False,
    concurrency: ConcurrencyOpt = None,
    endpoint: EndpointOpt = None,
    token_env: TokenEnvOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Continue a stopped fit from its last checkpoint, with its stored settings; it ends as an uninterrupted run would."""
    _resume(RunDirectory.open(run_dir), device, compile_layers, concurrency, endpoint, token_env, quiet, json_out)


def _resume(run: RunDirectory, device: str | None, compile_layers: bool, concurrency: int | None,
            endpoint: list[str] | None, token_env: str | None, quiet: bool, json_out: bool) -> None:
    display = Display(err, quiet=quiet or json_out)
    record = run.record
    if record.task is None or record.backend is None:
        raise ConfigError(f"{run.path} does not record its task and backend (the library made it without them); "
                          f"resume it from Python with BlackBoxTuner.resume")
    if run.finished:
        display.note(f"{run.path} is finished; its recorded result:")
        return _report_fit(stored_result(run), json_out)
    if endpoint and record.backend.backend not in SERVICES:
        raise ConfigError(f"--resume continues {run.path} with its stored settings, but --endpoint "
                          f"{', '.join(endpoint)} (the run has the {record.backend.backend} backend); drop that option")
    settings = record.backend
    changes: dict[str, Any] = {"device": device} if device else {}
    if compile_layers:  # how the layers run, not what they compute: a resume may switch it on
        changes["compile"] = True
    if endpoint:
        changes["endpoints"] = tuple(endpoint)
    if token_env is not None:
        changes["token_env"] = token_env
    settings = dataclasses.replace(settings, **changes)
    done = checkpoint.progress(run.path)
    where = f"after generation {done[0]} ({done[1]} of {done[2]} calls)" if done else "from the start"
    display.note(f"resume {run.path} {where}")

    async def job() -> FitResult:
        be = open_with_notes(settings, display)
        async with be:
            with display:
                return await workflows.resume(run, be, callbacks=[display], concurrency=concurrency)

    _report_fit(_run_job(job(), run.path, True), json_out)


def refusals(record: RunConfig, task_opts: TaskOptions, backend_opts: BackendOptions, tuning: TuningOptions,
             baseline: bool | None, output: Path | None, run_dir: Path) -> list[str]:
    """What a ``fit --resume`` command line would change about the stored run, one phrase per option.

    The command line's run is built as a new fit is, but from the stored record instead of the
    built-in defaults: an option given with the value the run already has changes nothing.
    """
    out: list[str] = []

    def differ(option: str, now: Any, then: Any) -> None:
        if now != then:
            out.append(f"--{option.replace('_', '-')} {now} (the run has {then})")

    assert record.task is not None and record.backend is not None
    stored_task = record.task
    task = task_opts.spec(stored_task)
    if task_opts.task_file is not None and task.to_dict() != stored_task.to_dict():
        out.append(f"--task-file {task_opts.task_file} (the run has another task)")
    elif task_opts.task_file is None:
        for opt, field in TaskOptions.FIELDS.items():
            if getattr(task_opts, opt) is not None:
                differ(opt, getattr(task, field), getattr(stored_task, field))
    tune, stored_tune = tuning.config(record.tune), record.tune
    for field in (f.name for f in dataclasses.fields(stored_tune)):
        now, then = getattr(tune, field), getattr(stored_tune, field)
        source = tuning.source(field)
        if now != then:
            given = getattr(tuning, source)
            out.append(f"--{source.replace('_', '-')} {given if source in TuningOptions.FIELDS else f'{given} ({field} {now})'}"
                       f" (the run has {then})")
    settings = backend_opts.settings(record.backend)
    for opt, field in BackendOptions.FIELDS.items():
        if getattr(backend_opts, opt) not in (None, False):
            differ(opt, getattr(settings, field), getattr(record.backend, field))
    if baseline is not None:
        differ("baseline", baseline, record.baseline)
    if output is not None and output.resolve() != run_dir.resolve():
        differ("output", output, run_dir)
    return out


def _run_job(job: Any, run_dir: Path, ours: bool) -> FitResult:
    """Run a fit's coroutine until done or stopped by a signal; a stop says how to continue."""
    try:
        return asyncio.run(run_until_signal(job))
    except KeyboardInterrupt:  # a second Ctrl-C: the files are consistent all the same
        raise _with_hint(RunInterrupted(2), run_dir) if ours else RunInterrupted(2) from None
    except LmaasTuneError as exc:  # a runtime failure (the service went away...): say how to continue
        # a service that refuses midway (a revoked key...) stops a run that a resume can continue too
        if ours and (exc.exit_code != 2 or isinstance(exc, RemoteError)):
            raise _with_hint(exc, run_dir) from None
        raise


def _with_hint(exc: LmaasTuneError, run_dir: Path) -> LmaasTuneError:
    """Tell how to continue, if the run directory got far enough to be resumed."""
    if not RunConfig.exists(run_dir):
        return exc
    done = checkpoint.progress(run_dir)
    where = f" after generation {done[0]} ({done[1]} of {done[2]} calls)" if done else ""
    exc.hint = f"the run is saved{where}; continue it with: lmaas-tune fit --resume {run_dir}"
    return exc


def _report_fit(result: FitResult, json_out: bool) -> None:
    test, manual = result.test, result.manual
    payload = {"run_dir": str(result.run_dir), "metric": result.metric, "dev": result.dev,
               "test": test.to_dict() if test else None, "manual_prompt_test": manual.to_dict() if manual else None,
               "calls": result.calls, "wall_time_s": round(result.wall_time, 2), "ledger": result.ledger}
    if json_out:
        out.print_json(json.dumps(payload))
        return
    assert test is not None
    versus = f" (manual prompt: {manual.value:.4f}, {100 * (test.value - manual.value):+.1f} points)" if manual else ""
    out.print(f"test {result.metric}: {test.value:.4f} on {test.n} examples{versus}; best dev {result.dev:.4f}; "
              f"{result.calls} calls in {result.wall_time:.0f} s; run saved in {result.run_dir}")
