"""``fit --resume DIR``: the settings a resumed run continues with, and the options it refuses.

A resumed run keeps everything that decides its result: the task (template, label words, data),
the model and its precision, every tuning setting, the baseline. Options that only decide *where*
or *how fast* it runs may be given: ``--device``, ``--concurrency``, ``--endpoint`` and
``--token-env`` (for a run on the remote backend), ``--quiet``, ``--json``. Any other option given
with ``--resume`` must agree with the stored run; otherwise the resume is refused, naming it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from .. import workflows
from ..backends.factory import BackendSettings
from ..backends.models import EMBEDDED
from ..config import METHOD_PRESETS, PRESETS, TuneConfig
from ..errors import ConfigError
from ..tasks.catalog import TASKS
from ..tasks.data import BUILTIN_PREFIX
from ..tasks.spec import TaskSpec

#: options that may differ from the stored run (they do not change the result)
FREE = {"resume", "device", "compile_layers", "concurrency", "endpoint", "token_env", "quiet", "json_out"}

#: tuning option -> TuneConfig field
TUNE_FIELDS = {"seed": "seed", "budget": "budget", "popsize": "popsize", "prompt_length": "prompt_length",
               "intrinsic_dim": "intrinsic_dim", "sigma": "sigma0", "alpha": "alpha", "loss": "loss",
               "k_shot": "k_shot", "eval_every": "eval_every", "on_long": "on_long", "prompt_init": "prompt_init"}


def absolute_data_path(location: str | None) -> str | None:
    """Data paths are stored absolute, so a run resumes from any working directory."""
    if location is None or location.startswith(BUILTIN_PREFIX):
        return location
    return str(Path(os.path.expanduser(location)).resolve())


def split_words(text: str | None) -> tuple[str, ...] | None:
    return tuple(w.strip() for w in text.split(",") if w.strip()) if text else None


def parse_columns(items: list[str] | None) -> dict[str, str]:
    cols: dict[str, str] = {}
    for item in items or []:
        field, sep, col = item.partition("=")
        if not sep or not field.strip() or not col.strip():
            raise ConfigError(f"--column expects FIELD=COLUMN (e.g. --column sentence=text); got {item!r}")
        cols[field.strip()] = col.strip()
    return cols


def _model_key(model: str) -> str:
    if model in EMBEDDED:
        return EMBEDDED.canonical(model)
    path = Path(os.path.expanduser(model))
    return str(path.resolve()) if path.exists() else model


def _given(ctx: typer.Context) -> set[str]:
    """Parameters set on the command line or from the environment (not left at their default)."""
    out = set()
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name) if p.name else None
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            out.add(p.name)
    return out


def _option(ctx: typer.Context, name: str) -> str:
    for p in ctx.command.params:
        if p.name == name and getattr(p, "opts", None):
            return max(p.opts, key=len)
    return name


def _task_conflicts(v: dict[str, Any], given: set[str], spec: TaskSpec) -> list[tuple[str, Any, Any]]:
    if "task_file" in given:
        other = TaskSpec.from_file(v["task_file"])
        return [] if other.to_dict() == spec.to_dict() else [("task_file", v["task_file"], "another task")]
    task = v["task"]
    wanted = {
        "task": (TASKS.canonical(task) if task in TASKS else task, spec.name),
        "template": (v["template"], spec.template),
        "label_words": (split_words(v["label_words"]), spec.label_words),
        "train_file": (absolute_data_path(v["train_file"]), absolute_data_path(spec.train)),
        "test_file": (absolute_data_path(v["test_file"]), absolute_data_path(spec.test)),
        "column": (parse_columns(v["column"]), dict(spec.columns)),
        "label_column": (v["label_column"], spec.label_column),
        "labels": (tuple(x.strip() for x in v["labels"].split(",")) if v["labels"] else None, spec.labels),
    }
    return [(k, now, then) for k, (now, then) in wanted.items() if k in given and now != then]


def _tune_conflicts(v: dict[str, Any], given: set[str], tune: TuneConfig) -> list[tuple[str, Any, Any]]:
    base = PRESETS.get(v["preset"]).config if "preset" in given else tune
    if "preset" in given or "method" in given:  # as a new fit composes them: size preset, then method preset
        base = METHOD_PRESETS.get(v["method"]).apply(base)
    overrides = {f: v[opt] for opt, f in TUNE_FIELDS.items() if opt in given}
    wanted = base.with_overrides(**overrides).to_dict()
    stored = tune.to_dict()
    by_field = {f: opt for opt, f in TUNE_FIELDS.items() if opt in given}
    knobs = {"method", "sigma0", "alpha", "distribution", "bounds", "loss"} if "method" in given else set()
    out = []
    for f, now in wanted.items():
        if now != stored[f]:
            source = "method" if f in knobs else "preset"
            out.append((by_field.get(f, source), now if f in by_field else f"{v[source]} ({f} {now})", stored[f]))
    return out


def resume_settings(ctx: typer.Context, run_dir: Path, values: dict[str, Any]) -> tuple[TaskSpec, TuneConfig, BackendSettings]:
    """The stored task, tuning and backend settings of ``run_dir``, with the free options applied.

    ``values`` are the command's parameter values by name. Raises :class:`ConfigError` naming
    every given option that disagrees with the stored run.
    """
    spec, tune, backend, stored = workflows.stored_settings(run_dir)
    given = _given(ctx) - FREE
    conflicts = _task_conflicts(values, given, spec) + _tune_conflicts(values, given, tune)
    backend_now = {"backend": (values["backend"], backend.backend), "dtype": (values["dtype"], backend.dtype),
                   "model": (_model_key(values["model"]), _model_key(backend.model)),
                   "model_kind": (values["model_kind"], backend.kind), "fused": (values["fused"], backend.fused),
                   "baseline": (values["baseline"], stored.get("baseline", True))}
    conflicts += [(k, now, then) for k, (now, then) in backend_now.items() if k in given and now != then]
    if "output" in given and Path(values["output"]).resolve() != Path(run_dir).resolve():
        conflicts.append(("output", values["output"], str(run_dir)))
    if values["endpoint"] and backend.backend != "remote":
        conflicts.append(("endpoint", ", ".join(values["endpoint"]), "the local backend"))
    if conflicts:
        listed = "; ".join(f"{_option(ctx, k)} {now} (the run has {then})" for k, now, then in conflicts)
        raise ConfigError(f"--resume continues {run_dir} with its stored settings, but {listed}; drop "
                          f"{'that option' if len(conflicts) == 1 else 'those options'}, or start a new run "
                          f"with another --output")
    settings = backend
    if "device" in _given(ctx):
        settings = replace(settings, device=values["device"])
    if values["compile_layers"]:  # how the layers run, not what they compute: a resume may switch it on
        settings = replace(settings, compile=True)
    if values["endpoint"]:
        settings = replace(settings, endpoints=tuple(values["endpoint"]))
    if "token_env" in _given(ctx):
        settings = replace(settings, token_env=values["token_env"])
    return spec, tune, settings

