"""lmaas-tune: Black-Box Tuning of soft prompts for language models you can only query.

The public API, in a few lines::

    from lmaas_tune import BlackBoxTuner, LocalBackend, PRESETS, get_task

Everything in ``__all__`` is importable from here. Only the error classes are imported
eagerly: the rest (which pulls in torch, aiohttp, ...) loads on first access, so
``import lmaas_tune`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AuthenticationError,
    BackendError,
    BadResponseError,
    BudgetExhaustedError,
    ConfigError,
    ConnectionLostError,
    DataError,
    IncompatibleServiceError,
    InputTooLongError,
    LmaasTuneError,
    MissingExtraError,
    ModelLoadError,
    ModelNotFoundError,
    NonFiniteLossError,
    RateLimitError,
    RejectedError,
    RemoteError,
    RemoteTimeoutError,
    RunDirectoryError,
    RunInterrupted,
    ServerError,
    TemplateError,
    UnknownNameError,
    VerbalizerError,
    WireFormatError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .backends.base import Backend, BackendInfo, ModelKind, Query, ScoringBatch
    from .backends.local import LocalBackend
    from .backends.remote import RemoteBackend
    from .backends.vllm import VllmBackend
    from .methods import METHOD_PRESETS, PRESETS, TuneConfig, tune_config
    from .projection import Projection, ProjectionSpec
    from .runs import RunDirectory
    from .runs.record import RunConfig
    from .runs.reports import RunReport, RunSummary, plot_runs, read_runs
    from .runs.results import Evaluation, FitResult
    from .tasks import TASKS, Task, TaskSpec, custom_task, get_task
    from .tuning.evaluation import evaluate_prompt
    from .tuning.events import BudgetSpent, DevChecked, EvaluationProgress, EventStream, GenerationReport, Retry
    from .tuning.fewshot import FewShotSplit
    from .tuning.predict import Prediction, predict
    from .tuning.tuner import BlackBoxTuner
    from .sweeps import SweepRow, SweepTable, TrialOutcome, TrialSpec, grid, read_sweep, resume_sweep, sweep

# name -> the module that defines it (imported on first access, see __getattr__)
_LAZY: dict[str, str] = {
    "BlackBoxTuner": ".tuning.tuner",
    "FitResult": ".runs.results",
    "Evaluation": ".runs.results",
    "GenerationReport": ".tuning.events",
    "EvaluationProgress": ".tuning.events",
    "DevChecked": ".tuning.events",
    "Retry": ".tuning.events",
    "BudgetSpent": ".tuning.events",
    "EventStream": ".tuning.events",
    "TuneConfig": ".methods",
    "PRESETS": ".methods",
    "METHOD_PRESETS": ".methods",
    "tune_config": ".methods",
    "predict": ".tuning.predict",
    "Prediction": ".tuning.predict",
    "Backend": ".backends.base",
    "BackendInfo": ".backends.base",
    "ScoringBatch": ".backends.base",
    "Query": ".backends.base",
    "ModelKind": ".backends.base",
    "LocalBackend": ".backends.local",
    "RemoteBackend": ".backends.remote",
    "VllmBackend": ".backends.vllm",
    "Task": ".tasks",
    "custom_task": ".tasks",
    "TaskSpec": ".tasks",
    "get_task": ".tasks",
    "TASKS": ".tasks",
    "FewShotSplit": ".tuning.fewshot",
    "Projection": ".projection",
    "ProjectionSpec": ".projection",
    "evaluate_prompt": ".tuning.evaluation",
    "RunReport": ".runs.reports",
    "RunSummary": ".runs.reports",
    "read_runs": ".runs.reports",
    "plot_runs": ".runs.reports",
    "RunConfig": ".runs.record",
    "RunDirectory": ".runs",
    "sweep": ".sweeps",
    "resume_sweep": ".sweeps",
    "read_sweep": ".sweeps",
    "grid": ".sweeps",
    "TrialSpec": ".sweeps",
    "SweepTable": ".sweeps",
    "SweepRow": ".sweeps",
    "TrialOutcome": ".sweeps",
}

__all__ = [
    "PRESETS", "TASKS", "AuthenticationError", "Backend", "BackendError", "BackendInfo", "BadResponseError",
    "BlackBoxTuner", "BudgetExhaustedError", "BudgetSpent", "ConfigError", "ConnectionLostError", "DataError",
    "DevChecked", "EvaluationProgress", "EventStream", "FewShotSplit", "FitResult", "GenerationReport",
    "IncompatibleServiceError", "InputTooLongError", "LmaasTuneError", "LocalBackend", "ModelKind", "ModelLoadError",
    "ModelNotFoundError", "NonFiniteLossError", "Projection", "ProjectionSpec", "Query", "RateLimitError",
    "RejectedError", "RemoteBackend", "RemoteError", "RemoteTimeoutError", "Retry", "RunDirectoryError",
    "RunInterrupted", "RunReport", "RunSummary", "ScoringBatch", "ServerError", "Task", "TaskSpec", "TemplateError",
    "TuneConfig", "UnknownNameError", "VerbalizerError", "WireFormatError", "__version__", "custom_task",
    "evaluate_prompt", "get_task", "plot_runs", "read_runs",
    "METHOD_PRESETS", "Prediction", "predict", "tune_config", "Evaluation", "RunConfig", "RunDirectory",
    "VllmBackend", "MissingExtraError", "sweep", "resume_sweep", "read_sweep", "grid", "TrialSpec", "SweepTable",
    "SweepRow", "TrialOutcome",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
