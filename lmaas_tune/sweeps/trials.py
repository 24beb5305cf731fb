"""A sweep's trials: one :class:`TrialSpec` per point of a grid, each a whole fit.

A grid is a mapping of axes (a setting's name -> the values it takes); :func:`expand` lists its
points in a stable order, :func:`trial_id` names each point (``sst2-bbt-s42``, plus the other
axes: ``sst2-bbt-s42-budget200``). :func:`grid` builds the trials of the common case from
Python (tasks x methods x seeds, the other settings shared); the CLI builds its trials from the
same options ``fit`` takes (:mod:`lmaas_tune.cli.sweep`). A trial is stored resolved (task,
tuning settings, backend), so a resumed sweep runs exactly what it started with.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmaas_tune.backends.factory import BackendSettings
from lmaas_tune.errors import ConfigError
from lmaas_tune.methods import TuneConfig, tune_config
from lmaas_tune.tasks.catalog import TASKS
from lmaas_tune.tasks.data import HubSource
from lmaas_tune.tasks.spec import TaskSpec

#: the BBT paper's seven tasks, in its table's order, and the seeds ``--preset paper-table`` runs
PAPER_TASKS = ("sst2", "yelpp", "agnews", "dbpedia", "mrpc", "snli", "rte")
PAPER_SEEDS = (42, 43, 44)
#: the axes every trial id starts with, in this order
_LEADING = ("task", "method", "seed")


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a sweep: a fit of ``task`` with ``tune`` on ``backend``, named ``id``.

    ``point`` holds the grid values that make this trial (``task``, ``method``, ``seed`` and any
    other axis), as given: the table groups trials by them.
    """

    id: str
    task: TaskSpec
    tune: TuneConfig
    backend: BackendSettings
    baseline: bool = True
    point: Mapping[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        """The method as the grid named it (``bbt-cobyla``, not the ``bbt`` it configures)."""
        return str(self.point.get("method", self.tune.method))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "point": dict(self.point), "task": self.task.to_dict(), "tune": self.tune.to_dict(),
                "backend": self.backend.to_dict(), "baseline": self.baseline}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialSpec":
        return cls(str(d["id"]), TaskSpec.from_dict(d["task"]), TuneConfig.from_dict(d["tune"]),
                   BackendSettings.from_dict(d["backend"]), bool(d.get("baseline", True)), dict(d.get("point") or {}))


def expand(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every point of the grid: task, method and seed vary slowest to fastest, then the other axes."""
    for name, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"grid axis {name!r} must be a non-empty list of values; got {values!r}")
    names = [n for n in _LEADING if n in axes] + [n for n in axes if n not in _LEADING]
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def _part(value: Any) -> str:
    text = Path(value).stem if isinstance(value, Path) or (isinstance(value, str) and os.sep in value) else str(value)
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_") or "x"


def trial_id(point: Mapping[str, Any]) -> str:
    """A stable, file-name-safe name for a grid point: ``task-method-sSEED`` and then ``-NAMEvalue``
    for each other axis (``sst2-bbt-s42-budget200``)."""
    parts = [_part(point.get("task", "task")), _part(point.get("method", "bbt"))]
    if "seed" in point:
        parts.append(f"s{_part(point['seed'])}")
    parts += [f"{_part(k)}{_part(v)}" for k, v in point.items() if k not in _LEADING]
    return "-".join(parts)


def check_unique(trials: Sequence[TrialSpec]) -> None:
    """Refuse two trials with one name (two grid values that print alike)."""
    seen: set[str] = set()
    twice = sorted({t.id for t in trials if t.id in seen or seen.add(t.id)})  # type: ignore[func-returns-value]
    if twice:
        raise ConfigError(f"the grid names several trials {', '.join(twice)}; give values that differ in their "
                          f"printed form")
    if not trials:
        raise ConfigError("the grid has no trials; give at least one task, seed and method")


def grid(
    tasks: Sequence[str | TaskSpec],
    seeds: Sequence[int] = (42,),
    methods: Sequence[str] = ("bbt",),
    *,
    preset: str = "paper",
    backend: BackendSettings | None = None,
    baseline: bool = True,
    vary: Mapping[str, Sequence[Any]] | None = None,
    **tune: Any,
) -> tuple[TrialSpec, ...]:
    """Trials for every task x method x seed (and every value of each ``vary`` axis, a
    :class:`~lmaas_tune.methods.TuneConfig` field); ``tune`` settings apply to every trial.

    Each trial's settings are composed as ``fit``'s: the size ``preset``, then the method preset,
    then the settings given. A task is a registered name or a :class:`TaskSpec`.
    """
    by_name = {t if isinstance(t, str) else t.name: t for t in tasks}
    if len(by_name) < len(tasks):
        names = [t if isinstance(t, str) else t.name for t in tasks]
        raise ConfigError(f"the grid names task {sorted({n for n in names if names.count(n) > 1})} more than once; "
                          f"give each task once, and each custom task its own name (TaskSpec(name=...))")
    axes: dict[str, Sequence[Any]] = {"task": list(by_name), "method": list(methods), "seed": list(seeds),
                                      **(vary or {})}
    settings = backend or BackendSettings()
    trials = []
    for point in expand(axes):
        given = by_name[point["task"]]
        spec = TaskSpec(TASKS.canonical(given)) if isinstance(given, str) else given
        spec.build()  # an unknown task or bad template fails now, before any model is loaded
        others = {k: v for k, v in point.items() if k not in ("task", "method")}
        config = tune_config(preset, point["method"], **{**tune, **others})
        trials.append(TrialSpec(trial_id(point), spec, config, settings, baseline, point))
    check_unique(trials)
    return tuple(trials)


def unavailable(task: str) -> str | None:
    """Why a registered task cannot run here (its data is not shipped and ``datasets``, which would fetch
    it, is not installed), or ``None``."""
    source = TASKS.get(task).source
    if not isinstance(source, HubSource):
        return None
    where = f"Hugging Face {source.dataset}" + (f"/{source.config}" if source.config else "")
    if importlib.util.find_spec("datasets") is None:
        return (f"{task}: no shipped data ({where}); install the hub extra (pip install 'lmaas-tune[hub]') and run "
                f"online to include it")
    return None  # datasets reads it from the hub or its local cache; a trial that cannot says so itself
