"""Using a model or a tuned prompt: ``lmaas-tune evaluate`` and ``lmaas-tune predict``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lmaas_tune.backends.factory import SERVICES, BackendSettings
from lmaas_tune.runs.saved import SavedRun
from lmaas_tune.tuning import workflows
from lmaas_tune.tuning.ledger import BudgetLedger
from lmaas_tune.tuning.predict import iter_predictions, read_inputs

from .app import app, err, handled, out
from .display import Display
from .interrupts import run_until_signal
from .loading import open_with_notes
from .options import (
    BackendOptions, DeviceOpt, EndpointOpt, JsonOpt, OnLongOpt, QuietOpt, TaskOptions, TokenEnvOpt, grouped,
)


def saved_run_settings(saved: SavedRun, device: str | None, endpoint: list[str] | None, token_env: str | None,
                       backend: str | None = None, **local: bool) -> BackendSettings:
    """A saved run's backend, moved to another device or to the service at ``endpoint`` (of the
    kind ``backend`` names; default: the run's own service kind, else an lmaas-tune service);
    ``local`` switches (``fused``, ``compile``) turn on how a local model runs."""
    switched: dict[str, Any] = {k: True for k, on in local.items() if on}
    settings = dataclasses.replace(saved.settings, device=device or "auto", **switched)
    if endpoint:  # the service moved: score the run's prompt on these endpoints
        kind = backend or (settings.backend if settings.backend in SERVICES else "remote")
        settings = dataclasses.replace(settings, backend=kind, endpoints=tuple(endpoint), token_env=token_env)
    return settings


@app.command("evaluate")
@handled
@grouped(task_opts=TaskOptions, backend_opts=BackendOptions)
def evaluate_cmd(
    task_opts: TaskOptions,
    backend_opts: BackendOptions,
    run_dir: Annotated[Optional[Path], typer.Argument(help="A run directory from `fit`: score its best prompt on the test set.")] = None,
    on_long: OnLongOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score the manual prompt (zero-shot) on a task's test set, or a tuned run's prompt with RUN_DIR."""
    display = Display(err, quiet=quiet or json_out)
    start = time.perf_counter()
    saved = None
    if run_dir is not None:
        saved = SavedRun.load(run_dir)
        b = backend_opts
        settings = saved_run_settings(saved, b.device, b.endpoint, b.token_env, b.backend, fused=b.fused,
                                      compile=b.compile_layers)
        spec = saved.task
    else:
        spec = task_opts.spec()
        settings = backend_opts.settings()
    ledger = BudgetLedger.for_scoring()

    async def run() -> Any:
        be = open_with_notes(settings, display)
        async with be:
            with display:
                progress = display.evaluation_progress
                if saved is not None:
                    return await workflows.evaluate_run(saved, be, progress=progress, on_long=on_long or "drop",
                                                        ledger=ledger)
                return await workflows.zero_shot(spec, be, progress=progress, on_long=on_long or "drop", ledger=ledger)

    result = asyncio.run(run_until_signal(run()))
    wall = time.perf_counter() - start
    payload = {**result.to_dict(), "task": spec.name, "model": settings.model, "wall_time_s": round(wall, 2),
               "ledger": ledger.to_dict()}
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
    device: DeviceOpt = None,
    endpoint: EndpointOpt = None,
    token_env: TokenEnvOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Label texts with a tuned run's prompt: one JSON line per text, {"label", "label_index", "probabilities"}."""
    display = Display(err, quiet=quiet)
    saved = SavedRun.load(run_dir)
    rows = read_inputs(input_file, saved.task.build(), input_format)
    settings = saved_run_settings(saved, device, endpoint, token_env)
    ledger = BudgetLedger.for_scoring()

    async def run() -> None:
        be = open_with_notes(settings, display)
        sink = output_file.open("w", encoding="utf-8") if output_file is not None else None
        try:
            async with be:
                with display:
                    async for part in iter_predictions(
                            saved, be, rows, batch_size=batch_size, ledger=ledger,
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
    display.note(f"predict: {len(rows)} texts in {ledger.eval_calls} uncharged call(s), "
                 f"{ledger.attempts} request(s), {ledger.retries} retried")
