"""The ``lmaas-tune`` command: a thin shell over :mod:`lmaas_tune.workflows`."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional, ParamSpec, TypedDict, TypeVar

import typer
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from .. import checkpoint, workflows
from ..backends.factory import BACKENDS, BackendSettings, open_backend
from ..backends.models import DEFAULT_MODEL, EMBEDDED, cache_root, needs_conversion, resolve_model
from ..config import METHOD_PRESETS, PRESETS, tune_config
from ..errors import ConfigError, LmaasTuneError, RunInterrupted
from ..interrupts import run_until_signal
from ..runs import CONFIG, RunDirectory
from ..tasks.catalog import TASKS
from ..tasks.spec import TaskSpec
from ..tuner import FitResult, stored_result
from .display import Display, make_console
from .resume import absolute_data_path, parse_columns, resume_settings, split_words

app = typer.Typer(
    help="Black-Box Tuning of soft prompts for language models you can only query.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = make_console()
err = make_console(stderr=True)
_state = {"debug": False}

P = ParamSpec("P")
R = TypeVar("R")


def _one_line(exc: BaseException) -> str:
    return escape(re.sub(r"\s*\n\s*", " ", str(exc)).strip())


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn package errors into one red line and an exit code (2 usage, 1 runtime); --debug shows tracebacks.

    An error may carry a ``hint`` (printed on a second line: how to resume a stopped run). A
    signal that stopped a run exits with 128 + its number (130 SIGINT, 143 SIGTERM).
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except RunInterrupted as exc:
            err.print(f"[yellow]{_one_line(exc)}[/]", highlight=False, soft_wrap=True)
            _print_hint(exc)
            raise typer.Exit(exc.exit_code) from None
        except LmaasTuneError as exc:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
            _print_hint(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except OSError as exc:  # the environment (disk full, permissions), not a bug: one line, exit 1
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _print_hint(exc: BaseException) -> None:
    hint = getattr(exc, "hint", None)
    if hint:
        err.print(escape(hint), highlight=False, soft_wrap=True)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does.")] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
    )


# -- shared options ------------------------------------------------------------------------------

TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Registered task (see `lmaas-tune tasks`) or `custom`.")]
TemplateOpt = Annotated[Optional[str], typer.Option(help="Template with {field} slots and one {mask}, e.g. '{sentence} It was {mask}'.")]
WordsOpt = Annotated[Optional[str], typer.Option("--label-words", help="Comma-separated label words, in label order.")]
TrainOpt = Annotated[Optional[str], typer.Option("--train-file", help="Train pool (.tsv/.csv/.jsonl with a header).")]
TestOpt = Annotated[Optional[str], typer.Option("--test-file", help="Test set, same format.")]
ColumnOpt = Annotated[Optional[list[str]], typer.Option("--column", help="Map a template field to a column: FIELD=COLUMN (repeatable).")]
LabelColOpt = Annotated[str, typer.Option("--label-column", help="Column holding the label.")]
LabelsOpt = Annotated[Optional[str], typer.Option("--labels", help="Raw label values in label-word order, comma-separated (default: sorted).")]
TaskFileOpt = Annotated[Optional[Path], typer.Option("--task-file", help="A custom task in .toml or .json (keys as the options above).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help=f"Embedded name ({', '.join(EMBEDDED)}), .gguf file, local directory, or hub id (e.g. roberta-large).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bfloat16 on a GPU or a CPU that multiplies it natively, float16 on older GPUs, else float32), float32, bfloat16, float16.")]
FusedOpt = Annotated[bool, typer.Option("--fused", help="Local backend, Llama-architecture model on the CPU: run the texts through the fused layers (lmaas_tune/backends/fused_llama.py; README, Speed).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="Local backend: compile the model's layers with torch.compile (the first calls of each input shape pay the compilation; README, Speed).")]
KindOpt = Annotated[Optional[str], typer.Option("--model-kind", help="Override detection: masked or causal.")]
EndpointOpt = Annotated[Optional[list[str]], typer.Option("--endpoint", help="Remote backend: URL of an `lmaas-tune serve` service (repeatable: the endpoints share each population). Implies --backend remote.")]
TokenEnvOpt = Annotated[Optional[str], typer.Option("--token-env", help="Remote backend: environment variable holding the bearer token (default: LMAAS_TUNE_TOKEN when set).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")]
OnLongOpt = Annotated[Optional[str], typer.Option("--on-long", help="Inputs longer than the model limit: drop (and count them; the default) or error.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _task_spec(task: str, template: str | None, label_words: str | None, train: str | None, test: str | None,
               column: list[str] | None, label_column: str, labels: str | None, task_file: Path | None) -> TaskSpec:
    if task_file is not None:
        return TaskSpec.from_file(task_file)
    cols = parse_columns(column)
    values = tuple(v.strip() for v in labels.split(",")) if labels else None
    spec = TaskSpec(task, template, split_words(label_words), absolute_data_path(train), absolute_data_path(test),
                    cols, label_column, values)
    spec.build()  # validate now, before a model is loaded
    return spec


def _settings(backend: str, model: str, device: str, dtype: str, kind: str | None,
              endpoints: list[str] | None, token_env: str | None, fused: bool = False,
              compile_layers: bool = False) -> BackendSettings:
    if endpoints and backend == "local":
        backend = "remote"
    if backend == "remote" and not endpoints:
        raise ConfigError("--backend remote needs at least one --endpoint URL (from `lmaas-tune serve`)")
    if backend == "remote" and (fused or compile_layers):
        flag = "--fused" if fused else "--compile"
        raise ConfigError(f"{flag} sets how a local model runs; the remote service decides that for its own: drop "
                          f"{flag}, or pass it to `lmaas-tune serve`")
    local = Path(model).expanduser()
    if model not in EMBEDDED and local.exists():  # stored absolute, so `fit --resume` works from anywhere
        model = str(local.resolve())
    return BackendSettings(backend, model, device, dtype, kind, endpoints=tuple(endpoints or ()), token_env=token_env,
                           fused=fused, compile=compile_layers)


def _open(settings: BackendSettings, display: Display) -> Any:
    start = time.perf_counter()
    what = ", ".join(settings.endpoints) if settings.endpoints else settings.model
    display.note(f"loading {what} ({settings.backend} backend)...")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display is enough
    if not settings.endpoints and settings.backend == "local" and needs_conversion(resolve_model(settings.model)):
        display.note(f"first use of {settings.model}: de-quantising its GGUF file once into {cache_root()} (about 20-30 s)")
    backend = open_backend(settings)
    info = backend.info
    display.note(f"loaded {info.model_id}: {info.kind.value} LM, hidden {info.hidden_size}, "
                 f"{info.device}/{info.dtype}, {time.perf_counter() - start:.1f} s")
    if getattr(backend, "compiled", False):
        display.note("--compile: the first calls compile the model's layers (minutes on a CPU); later ones run compiled")
    return backend


# -- commands ------------------------------------------------------------------------------------


class _TaskRow(TypedDict):
    task: str
    kind: str
    template: str
    label_words: list[str]
    metric: str
    description: str


@app.command("tasks")
@handled
def tasks_cmd(json_out: JsonOpt = False) -> None:
    """List the registered tasks with their templates and label words."""
    rows: list[_TaskRow] = []
    for name, task in TASKS.items():
        for kind, fmt in (("masked", task.masked), ("causal", task.causal)):
            if fmt is not None:
                rows.append({"task": name, "kind": kind, "template": fmt.template.text,
                             "label_words": list(fmt.label_words), "metric": task.metric,
                             "description": task.description})
    if json_out:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="tasks", show_lines=True)
    for col in ("task", "model kind", "template", "label words", "metric"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["task"], r["kind"], repr(r["template"])[1:-1], ", ".join(r["label_words"]), r["metric"])
    out.print(table)


@app.command("evaluate")
@handled
def evaluate_cmd(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A run directory from `fit`: score its best prompt on the test set.")] = None,
    task: TaskOpt = "sst2",
    template: TemplateOpt = None,
    label_words: WordsOpt = None,
    train_file: TrainOpt = None,
    test_file: TestOpt = None,
    column: ColumnOpt = None,
    label_column: LabelColOpt = "label",
    labels: LabelsOpt = None,
    task_file: TaskFileOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    backend: Annotated[str, typer.Option(help=f"Backend: {', '.join(BACKENDS)}.")] = "local",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    model_kind: KindOpt = None,
    fused: FusedOpt = False,
    compile_layers: CompileOpt = False,
    endpoint: EndpointOpt = None,
    token_env: TokenEnvOpt = None,
    on_long: OnLongOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score the manual prompt (zero-shot) on a task's test set, or a tuned run's prompt with RUN_DIR."""
    display = Display(err, quiet=quiet or json_out)
    start = time.perf_counter()
    saved = None
    if run_dir is not None:
        saved = workflows.SavedRun.load(run_dir)
        overrides: dict[str, Any] = {"device": device, **({"fused": True} if fused else {}),
                                     **({"compile": True} if compile_layers else {})}
        if endpoint:  # the service moved: score the run's prompt on these endpoints
            overrides.update(backend="remote", endpoints=tuple(endpoint), token_env=token_env)
        settings = BackendSettings.from_dict({**saved.settings.to_dict(), **overrides})
        spec = saved.task
    else:
        spec = _task_spec(task, template, label_words, train_file, test_file, column, label_column, labels, task_file)
        settings = _settings(backend, model, device, dtype, model_kind, endpoint, token_env, fused, compile_layers)

    async def run() -> Any:
        be = _open(settings, display)
        async with be:
            with display:
                progress = display.evaluation_progress
                if saved is not None:
                    return await workflows.evaluate_run(saved, be, progress=progress, on_long=on_long or "drop")
                return await workflows.zero_shot(spec, be, progress=progress, on_long=on_long or "drop")

    result = asyncio.run(run_until_signal(run()))
    wall = time.perf_counter() - start
    payload = {**result.to_dict(), "task": spec.name, "model": settings.model, "wall_time_s": round(wall, 2)}
    if saved is not None:
        payload["recorded"] = saved.recorded_test
    if json_out:
        out.print_json(json.dumps(payload))
        return
    what = f"run {run_dir}" if saved is not None else "manual prompt"
    dropped = f", {result.dropped} dropped as too long" if result.dropped else ""
    out.print(f"{spec.name} test {result.metric}: {result.value:.4f} ({result.n} examples{dropped}; "
              f"{what}, {settings.model}, {wall:.1f} s)")
    if saved is not None and saved.recorded_test is not None:
        out.print(f"recorded by fit: {saved.recorded_test['value']:.4f}")


@app.command("predict")
@handled
def predict_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory from `fit`: label texts with its best prompt.")],
    input_file: Annotated[Optional[Path], typer.Option("--input", "-i", help="Texts to label: .tsv/.csv/.jsonl with the template's fields as columns, or plain lines (one text each); default or -: standard input.")] = None,
    output_file: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the JSON lines here (default: standard output).")] = None,
    input_format: Annotated[str, typer.Option("--format", help="auto (by suffix; standard input: JSON lines if it starts with {, else plain lines), lines, tsv, csv or jsonl.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts scored per batch (and written at once).")] = 64,
    device: DeviceOpt = "auto",
    endpoint: EndpointOpt = None,
    token_env: TokenEnvOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Label texts with a tuned run's prompt: one JSON line per text, {"label", "label_index", "probabilities"}."""
    from ..predict import iter_predictions, read_inputs

    display = Display(err, quiet=quiet)
    saved = workflows.SavedRun.load(run_dir)
    rows = read_inputs(input_file, saved.task.build(), input_format)
    overrides: dict[str, Any] = {"device": device}
    if endpoint:
        overrides.update(backend="remote", endpoints=tuple(endpoint), token_env=token_env)
    settings = BackendSettings.from_dict({**saved.settings.to_dict(), **overrides})

    async def run() -> None:
        be = _open(settings, display)
        sink = output_file.open("w", encoding="utf-8") if output_file is not None else None
        try:
            async with be:
                with display:
                    async for part in iter_predictions(
                            saved, be, rows, batch_size=batch_size,
                            progress=lambda d, t: display.evaluation_progress(d, t, "predict")):
                        text = "".join(json.dumps(p.to_dict()) + "\n" for p in part)
                        if sink is not None:
                            sink.write(text)
                            sink.flush()
                        else:
                            out.file.write(text)
                            out.file.flush()
        finally:
            if sink is not None:
                sink.close()

    asyncio.run(run_until_signal(run()))


@app.command("fit")
@handled
def fit_cmd(
    ctx: typer.Context,
    task: TaskOpt = "sst2",
    template: TemplateOpt = None,
    label_words: WordsOpt = None,
    train_file: TrainOpt = None,
    test_file: TestOpt = None,
    column: ColumnOpt = None,
    label_column: LabelColOpt = "label",
    labels: LabelsOpt = None,
    task_file: TaskFileOpt = None,
    backend: Annotated[str, typer.Option(help=f"Backend: {', '.join(BACKENDS)}.")] = "local",
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    model_kind: KindOpt = None,
    fused: FusedOpt = False,
    compile_layers: CompileOpt = False,
    endpoint: EndpointOpt = None,
    token_env: TokenEnvOpt = None,
    preset: Annotated[str, typer.Option(help="Size of the run (prompt length, budget): " + "; ".join(f"{n}: {p.description}" for n, p in PRESETS.items()) + ".")] = "paper",
    method: Annotated[str, typer.Option(help="Tuning method and its knobs, applied over --preset (explicit options win): " + "; ".join(f"{n}: {p.description}" for n, p in METHOD_PRESETS.items()) + ".")] = "bbt",
    seed: Annotated[Optional[int], typer.Option(help="Seeds the few-shot split, the projection and CMA-ES (paper: 42).")] = None,
    budget: Annotated[Optional[int], typer.Option(help="API calls (candidates scored on the train set); paper: 8000.")] = None,
    popsize: Annotated[Optional[int], typer.Option(help="CMA-ES population size; paper: 20.")] = None,
    prompt_length: Annotated[Optional[int], typer.Option("--prompt-length", help="Soft-prompt tokens L; paper: 50.")] = None,
    intrinsic_dim: Annotated[Optional[int], typer.Option("--intrinsic-dim", help="Dimension d of z; paper: 500.")] = None,
    sigma: Annotated[Optional[float], typer.Option(help="CMA-ES initial step size sigma0; paper: 1.0.")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Projection scale factor alpha; paper: 1.0.")] = None,
    loss: Annotated[Optional[str], typer.Option(help="ce, hinge or acc (minus accuracy); paper: ce.")] = None,
    k_shot: Annotated[Optional[int], typer.Option("--k-shot", help="Train (and dev) examples per class; paper: 16.")] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Calls between dev checks; paper: 100.")] = None,
    prompt_init: Annotated[Optional[str], typer.Option("--prompt-init", help="Start the search from this text's token embeddings (repeated to L tokens) instead of zeros: p = A z + p0. Default: zeros, the paper's.")] = None,
    on_long: OnLongOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run directory (default: runs/TASK-MODEL-sSEED-TIME).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the stopped run in this directory, with its stored settings (only --device, --compile, --concurrency, --endpoint, --token-env, --quiet and --json may change); a finished run just shows its result.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="Score calls in flight at once (default: what the backend says).")] = None,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Also score the manual prompt on the test set, for comparison.")] = True,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Tune a soft prompt with Black-Box Tuning (CMA-ES over a random projection), or continue a stopped run."""
    display = Display(err, quiet=quiet or json_out)
    if resume is not None:
        spec, config, settings = resume_settings(ctx, resume, dict(ctx.params))
        output = resume
        if RunDirectory.open(resume).finished:
            display.note(f"{resume} is finished; its recorded result:")
            return _report_fit(stored_result(RunDirectory(resume)), json_out)
        done = checkpoint.progress(resume)
        where = f"after generation {done[0]} ({done[1]} of {done[2]} calls)" if done else "from the start"
        display.note(f"resume {resume} {where}")
    else:
        spec = _task_spec(task, template, label_words, train_file, test_file, column, label_column, labels, task_file)
        config = tune_config(
            preset, method, seed=seed, budget=budget, popsize=popsize, prompt_length=prompt_length, intrinsic_dim=intrinsic_dim,
            sigma0=sigma, alpha=alpha, loss=loss, k_shot=k_shot, eval_every=eval_every, on_long=on_long,
            prompt_init=prompt_init,
        )
        settings = _settings(backend, model, device, dtype, model_kind, endpoint, token_env, fused, compile_layers)
        if output is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            output = Path("runs") / f"{spec.name}-{Path(model).stem}-s{config.seed}-{stamp}"
        display.note(
            f"fit {spec.name} ({config.method}): L={config.prompt_length} d={config.intrinsic_dim} popsize={config.popsize} "
            f"sigma={config.sigma0} budget={config.budget} loss={config.loss} {config.k_shot}-shot seed={config.seed} -> {output}"
        )
    run_dir = output
    ours = resume is not None or not (run_dir / CONFIG).exists()  # a hint may only point at this command's run

    async def run() -> FitResult:
        be = _open(settings, display)
        async with be:
            with display:
                if resume is not None:
                    return await workflows.resume(run_dir, be, callbacks=[display], concurrency=concurrency)
                return await workflows.fit(spec, be, settings, config, output=run_dir, callbacks=[display],
                                           concurrency=concurrency, baseline=baseline)

    try:
        result = asyncio.run(run_until_signal(run()))
    except KeyboardInterrupt:  # a second Ctrl-C: the files are consistent all the same
        raise _with_hint(RunInterrupted(2), run_dir) if ours else RunInterrupted(2) from None
    except LmaasTuneError as exc:  # a runtime failure (the service went away...): say how to continue
        if exc.exit_code != 2 and ours:
            raise _with_hint(exc, run_dir) from None
        raise
    _report_fit(result, json_out)


def _with_hint(exc: LmaasTuneError, run_dir: Path) -> LmaasTuneError:
    """Tell how to continue, if the run directory got far enough to be resumed."""
    if not (run_dir / CONFIG).is_file():
        return exc
    done = checkpoint.progress(run_dir)
    where = f" after generation {done[0]} ({done[1]} of {done[2]} calls)" if done else ""
    exc.hint = f"the run is saved{where}; continue it with: lmaas-tune fit --resume {run_dir}"
    return exc


def _report_fit(result: FitResult, json_out: bool) -> None:
    test, manual = result.test, result.manual
    payload = {"run_dir": str(result.run_dir), "metric": result.metric, "dev": result.dev,
               "test": test.to_dict() if test else None, "manual_prompt_test": manual.to_dict() if manual else None,
               "calls": result.calls, "wall_time_s": round(result.wall_time, 2)}
    if json_out:
        out.print_json(json.dumps(payload))
        return
    assert test is not None
    versus = f" (manual prompt: {manual.value:.4f}, {100 * (test.value - manual.value):+.1f} points)" if manual else ""
    out.print(f"test {result.metric}: {test.value:.4f} on {test.n} examples{versus}; best dev {result.dev:.4f}; "
              f"{result.calls} calls in {result.wall_time:.0f} s; run saved in {result.run_dir}")


@app.command("serve")
@handled
def serve_cmd(
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    model_kind: KindOpt = None,
    fused: FusedOpt = False,
    compile_layers: CompileOpt = False,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port, printed at start).")] = 8080,
    token_file: Annotated[Optional[Path], typer.Option("--token-file", help="File whose first line is the bearer token clients must send.")] = None,
    token_env: Annotated[Optional[str], typer.Option("--token-env", help="Environment variable holding the bearer token.")] = None,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body accepted (413 beyond).")] = 32.0,
    max_prompts: Annotated[int, typer.Option("--max-prompts", help="Candidates one request may carry.")] = 256,
    batch_window_ms: Annotated[float, typer.Option("--batch-window-ms", help="How long a request waits for others to share its forward pass.")] = 5.0,
    max_batch_prompts: Annotated[int, typer.Option("--max-batch-prompts", help="Candidates in one shared forward pass.")] = 64,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Candidates waiting or running before requests get 503 + Retry-After.")] = 1024,
) -> None:
    """Serve a model over HTTP, for `fit --backend remote --endpoint URL` (stop with Ctrl-C: in-flight requests finish)."""
    from ..server import ServerConfig, resolve_token, serve

    config = ServerConfig(
        host=host, port=port, token=resolve_token(token_file, token_env), max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_prompts_per_request=max_prompts, batch_window_s=batch_window_ms / 1000.0,
        max_batch_prompts=max_batch_prompts, max_queue_prompts=max_queue,
    )
    settings = BackendSettings("local", model, device, dtype, model_kind, fused=fused, compile=compile_layers)
    display = Display(err, quiet=False)

    async def run() -> None:
        be = _open(settings, display)
        async with be:
            def ready(url: str) -> None:
                auth = "bearer token required" if config.token else "no token (loopback only)"
                err.print(f"serving {be.info.model_id} on {url} ({auth}); Ctrl-C to stop", highlight=False, soft_wrap=True)

            await serve(be, config, on_ready=ready)
        err.print("stopped", highlight=False)

    asyncio.run(run())


def main() -> None:
    app()
