"""The CLI's options, defined once: single options and the option groups commands share.

An option group is a frozen dataclass whose fields are typer options (:class:`TaskOptions`,
:class:`BackendOptions`, :class:`TuningOptions`). :func:`grouped` adds a group's fields to a
command's parameters and hands the command one group object, so ``fit`` and ``evaluate`` take the
same task options without repeating them. Options a user may leave out default to ``None``: a
group builds its value from what was given, taking the rest from ``defaults`` (the built-in
defaults for a new run, or a stored run's record when ``fit --resume`` checks what was typed).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar, get_type_hints

import typer

from lmaas_tune.backends.factory import BACKENDS, SERVICES, BackendSettings
from lmaas_tune.backends.local.models import DEFAULT_MODEL, EMBEDDED
from lmaas_tune.errors import ConfigError
from lmaas_tune.methods import METHOD_PRESETS, PRESETS, TuneConfig
from lmaas_tune.methods.optimizers import OPTIMIZERS
from lmaas_tune.tasks.catalog import TASKS
from lmaas_tune.tasks.data import absolute_data_path
from lmaas_tune.tasks.spec import TaskSpec, parse_columns, split_words

# -- single options, shared by several commands ---------------------------------------------------

DeviceOpt = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps (default: auto).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="Local backend: compile the model's layers with torch.compile (the first calls of each input shape pay the compilation; docs/method.md).")]
EndpointOpt = Annotated[Optional[list[str]], typer.Option("--endpoint", help="Remote or vLLM backend: URL of an `lmaas-tune serve` service or a `vllm serve` server (repeatable: the endpoints share each population). Implies --backend remote unless --backend vllm is given.")]
TokenEnvOpt = Annotated[Optional[str], typer.Option("--token-env", help="Remote or vLLM backend: environment variable holding the bearer token / API key (default: LMAAS_TUNE_TOKEN when set).")]
ServedModelOpt = Annotated[Optional[str], typer.Option("--served-model", help="vLLM backend: the name the server serves the model under (default: the one model its /v1/models lists).")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option(help="Score calls in flight at once (default: what the backend says).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")]
OnLongOpt = Annotated[Optional[str], typer.Option("--on-long", help="Inputs longer than the model limit: drop (and count them; the default) or error.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help=f"Embedded name ({', '.join(EMBEDDED)}; default {DEFAULT_MODEL}), .gguf file, local directory, or hub id (e.g. roberta-large).")]
DtypeOpt = Annotated[Optional[str], typer.Option(help="auto (the default: bfloat16 on a GPU or a CPU that multiplies it natively, float16 on older GPUs, else float32), float32, bfloat16, float16.")]
KindOpt = Annotated[Optional[str], typer.Option("--model-kind", help="Override detection: masked or causal.")]
FusedOpt = Annotated[bool, typer.Option("--fused", help="Local backend, Llama-architecture model on the CPU: run the texts through the fused layers (docs/method.md).")]


# -- option groups ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Which task: a registered one (optionally with another template or label words), or your own data."""

    task: Annotated[Optional[str], typer.Option("--task", "-t", help="Registered task (see `lmaas-tune tasks`; default sst2) or `custom`.")] = None
    template: Annotated[Optional[str], typer.Option(help="Template with {field} slots and one {mask}, e.g. '{sentence} It was {mask}'.")] = None
    label_words: Annotated[Optional[str], typer.Option("--label-words", help="Label words in label order, comma-separated; several words for one label joined by | (e.g. 'negative|bad,positive|good'): a label scores the log-sum-exp of its words.")] = None
    verbalizer: Annotated[Optional[str], typer.Option("--verbalizer", help="Label words the task registers under this name instead of its default ones (see `lmaas-tune tasks`), e.g. multi: several words per label on sst2, yelpp and agnews.")] = None
    calibrate: Annotated[Optional[bool], typer.Option("--calibrate/--no-calibrate", help="Calibrate the label scores: score content-free inputs (N/A, empty, [MASK]) with each prompt, in the same calls, and divide each label's probability by theirs (docs/method.md).")] = None
    train_file: Annotated[Optional[str], typer.Option("--train-file", help="Train pool (.tsv/.csv/.jsonl with a header).")] = None
    test_file: Annotated[Optional[str], typer.Option("--test-file", help="Test set, same format.")] = None
    column: Annotated[Optional[list[str]], typer.Option("--column", help="Map a template field to a column: FIELD=COLUMN (repeatable).")] = None
    label_column: Annotated[Optional[str], typer.Option("--label-column", help="Column holding the label (default: label).")] = None
    labels: Annotated[Optional[str], typer.Option("--labels", help="Raw label values in label-word order, comma-separated (default: sorted).")] = None
    task_file: Annotated[Optional[Path], typer.Option("--task-file", help="A custom task in .toml or .json (keys as the options above).")] = None

    def spec(self, defaults: TaskSpec | None = None) -> TaskSpec:
        """The task these options name; what they leave out comes from ``defaults`` (a new task: sst2)."""
        if self.task_file is not None:
            return TaskSpec.from_file(self.task_file)
        d = defaults or TaskSpec("sst2")
        name = self.task or d.name
        label_words, verbalizer = d.label_words, d.verbalizer
        if self.label_words is not None or self.verbalizer is not None:  # alternatives: one given replaces both
            label_words, verbalizer = split_words(self.label_words), self.verbalizer
        spec = TaskSpec(
            TASKS.canonical(name) if name in TASKS else name,
            _given(self.template, d.template), label_words,
            _given(absolute_data_path(self.train_file), d.train), _given(absolute_data_path(self.test_file), d.test),
            parse_columns(self.column) if self.column else dict(d.columns), _given(self.label_column, d.label_column),
            _given(tuple(v.strip() for v in self.labels.split(",")) if self.labels else None, d.labels), d.metric,
            verbalizer, _given(self.calibrate, d.calibrate),
        )
        spec.build()  # validate now, before a model is loaded
        return spec

    #: option -> TaskSpec field, for naming what differs
    FIELDS = {"task": "name", "template": "template", "label_words": "label_words", "verbalizer": "verbalizer",
              "calibrate": "calibrate", "train_file": "train", "test_file": "test", "column": "columns", "label_column": "label_column",
              "labels": "labels"}


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """Where and how the model runs."""

    backend: Annotated[Optional[str], typer.Option(help=f"Backend: {', '.join(BACKENDS)} (default: local; --endpoint implies remote).")] = None
    model: ModelOpt = None
    device: DeviceOpt = None
    dtype: DtypeOpt = None
    model_kind: KindOpt = None
    fused: FusedOpt = False
    compile_layers: CompileOpt = False
    endpoint: EndpointOpt = None
    token_env: TokenEnvOpt = None
    served_model: ServedModelOpt = None

    def settings(self, defaults: BackendSettings | None = None) -> BackendSettings:
        """The backend these options name; what they leave out comes from ``defaults``."""
        d = defaults or BackendSettings()
        backend = self.backend or d.backend
        if self.endpoint and backend == "local":  # --endpoint implies the remote backend
            backend = "remote"
        endpoints = tuple(self.endpoint) if self.endpoint else d.endpoints
        if backend in SERVICES and not endpoints:
            raise ConfigError(f"--backend {backend} needs at least one --endpoint URL (from {SERVICES[backend]})")
        if self.served_model and backend != "vllm":
            raise ConfigError("--served-model names the model on a vLLM server; it needs --backend vllm")
        fused, compile_layers = self.fused or d.fused, self.compile_layers or d.compile
        if backend in SERVICES and (self.fused or self.compile_layers):
            flag = "--fused" if self.fused else "--compile"
            where = ", or pass it to `lmaas-tune serve`" if backend == "remote" else " (vLLM has options of its own)"
            raise ConfigError(f"{flag} sets how a local model runs; the {backend} service decides that for its own: "
                              f"drop {flag}{where}")
        return dataclasses.replace(
            d, backend=backend, model=model_key(self.model) if self.model else d.model, device=self.device or d.device,
            dtype=self.dtype or d.dtype, kind=_given(self.model_kind, d.kind), fused=fused, compile=compile_layers,
            endpoints=endpoints, token_env=_given(self.token_env, d.token_env),
            served_model=_given(self.served_model, d.served_model),
        )

    #: option -> BackendSettings field, for naming what differs (device, compile, endpoints and token may change)
    FIELDS = {"backend": "backend", "model": "model", "dtype": "dtype", "model_kind": "kind", "fused": "fused"}


@dataclasses.dataclass(frozen=True)
class TuningOptions:
    """How big the run is and how it searches (the paper's defaults unless a preset says otherwise)."""

    preset: Annotated[Optional[str], typer.Option(help="Size of the run (prompt length, budget; default paper): " + "; ".join(f"{n}: {p.description}" for n, p in PRESETS.items()) + ".")] = None
    method: Annotated[Optional[str], typer.Option(help="Tuning method and its knobs, applied over --preset (explicit options win; default bbt): " + "; ".join(f"{n}: {p.description}" for n, p in METHOD_PRESETS.items()) + ".")] = None
    seed: Annotated[Optional[int], typer.Option(help="Seeds the few-shot split, the projection and CMA-ES (paper: 42).")] = None
    budget: Annotated[Optional[int], typer.Option(help="API calls (candidates scored on the train set); paper: 8000.")] = None
    popsize: Annotated[Optional[int], typer.Option(help="CMA-ES population size; paper: 20.")] = None
    prompt_length: Annotated[Optional[int], typer.Option("--prompt-length", help="Soft-prompt tokens L; paper: 50.")] = None
    intrinsic_dim: Annotated[Optional[int], typer.Option("--intrinsic-dim", help="Dimension d of z; paper: 500.")] = None
    sigma: Annotated[Optional[float], typer.Option(help="CMA-ES initial step size sigma0; paper: 1.0.")] = None
    alpha: Annotated[Optional[float], typer.Option(help="Projection scale factor alpha; paper: 1.0.")] = None
    loss: Annotated[Optional[str], typer.Option(help="ce, hinge or acc (minus accuracy); paper: ce.")] = None
    k_shot: Annotated[Optional[int], typer.Option("--k-shot", help="Train (and dev) examples per class; paper: 16.")] = None
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Calls between dev checks; paper: 100.")] = None
    prompt_init: Annotated[Optional[str], typer.Option("--prompt-init", help="Start the search from this text's token embeddings (repeated to L tokens) instead of zeros: p = A z + p0. Default: zeros, the paper's.")] = None
    on_long: OnLongOpt = None
    optimizer: Annotated[Optional[str], typer.Option(help="How z is searched (--method bbt only; default cma-es): " + "; ".join(f"{n}: {d}" for n, d in OPTIMIZERS.items()) + ".")] = None
    cma_fraction: Annotated[Optional[float], typer.Option("--cma-fraction", help="--optimizer cma-cobyla: the share of the budget CMA-ES gets before COBYLA takes over (rounded down to whole generations); default 0.5.")] = None
    dev_candidates: Annotated[Optional[str], typer.Option("--dev-candidates", help="What each dev check scores: best (the lowest-train-loss candidate since the last check; the paper's, default) or best+mean (also CMA-ES's mean; the better on dev is kept).")] = None

    #: option -> TuneConfig field
    FIELDS = {"seed": "seed", "budget": "budget", "popsize": "popsize", "prompt_length": "prompt_length",
              "intrinsic_dim": "intrinsic_dim", "sigma": "sigma0", "alpha": "alpha", "loss": "loss", "k_shot": "k_shot",
              "eval_every": "eval_every", "on_long": "on_long", "prompt_init": "prompt_init", "optimizer": "optimizer",
              "cma_fraction": "cma_fraction", "dev_candidates": "dev_candidates"}

    def config(self, defaults: TuneConfig | None = None) -> TuneConfig:
        """The size preset, then the method preset, then the explicit options (the same composition
        as :func:`lmaas_tune.methods.tune_config`). With ``defaults`` (a stored run's settings), the
        presets apply only when named."""
        base = PRESETS.get(self.preset or "paper").config if defaults is None or self.preset else defaults
        if defaults is None or self.preset or self.method:
            base = METHOD_PRESETS.get(self.method or "bbt").apply(base)
        return base.with_overrides(**{f: getattr(self, opt) for opt, f in self.FIELDS.items()})

    def source(self, field: str) -> str:
        """The option that decided ``field`` of :meth:`config`."""
        for opt, f in self.FIELDS.items():
            if f == field and getattr(self, opt) is not None:
                return opt
        return "method" if self.method and field in ("method", "sigma0", "alpha", "distribution", "bounds", "loss", "optimizer") else "preset"


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def model_key(model: str) -> str:
    """A model as stored: an embedded name canonical, a local path absolute (so a resume works from anywhere)."""
    if model in EMBEDDED:
        return EMBEDDED.canonical(model)
    path = Path(os.path.expanduser(model))
    return str(path.resolve()) if path.exists() else model


# -- the group decorator ------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def grouped(**groups: type) -> Callable[[F], F]:
    """Give the command the fields of each group as options; it receives one object per group.

    ``@grouped(task=TaskOptions)`` on ``def cmd(task: TaskOptions, json_out: JsonOpt = False)``
    makes the command take ``--task``, ``--template``, ... and ``--json``.
    """

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        resolved = get_type_hints(fn, include_extras=True)  # typer cannot resolve a replaced signature's strings
        own = [p.replace(annotation=resolved.get(name, p.annotation)) for name, p in sig.parameters.items()
               if name not in groups]
        added: dict[str, list[str]] = {}
        for name, group in groups.items():
            hints = get_type_hints(group, include_extras=True)
            fields = dataclasses.fields(group)
            added[name] = [f.name for f in fields]
            own += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name], default=f.default)
                    for f in fields]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            for name, group in groups.items():
                kwargs[name] = group(**{f: kwargs.pop(f) for f in added[name]})
            return fn(**kwargs)

        wrapper.__signature__ = sig.replace(parameters=_ordered(own))  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _ordered(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """Positional parameters (arguments) first, then keyword-only ones."""
    positional = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    return positional + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params if p not in positional]
