"""A serialisable description of a task (registered, registered with overrides, or custom).

Run directories store this, so a saved run rebuilds its task without the original command line.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lmaas_tune.errors import ConfigError
from .catalog import TASKS
from .data import TableSource
from .task import Task, custom_task


def split_words(text: str | None) -> tuple[str, ...] | None:
    """``"bad, great"`` -> ``("bad", "great")`` (``None`` for nothing)."""
    return tuple(w.strip() for w in text.split(",") if w.strip()) if text else None


def parse_columns(items: Sequence[str] | None) -> dict[str, str]:
    """``["sentence=text"]`` -> ``{"sentence": "text"}``: template fields mapped to data columns."""
    cols: dict[str, str] = {}
    for item in items or []:
        field, sep, col = item.partition("=")
        if not sep or not field.strip() or not col.strip():
            raise ConfigError(f"--column expects FIELD=COLUMN (e.g. --column sentence=text); got {item!r}")
        cols[field.strip()] = col.strip()
    return cols


@dataclass(frozen=True)
class TaskSpec:
    """A registered task by ``name`` (the other fields override parts of it), or a custom task
    (any other name, with template, label words and train/test files)."""

    name: str = "custom"
    template: str | None = None
    label_words: tuple[str, ...] | None = None
    train: str | None = None
    test: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    label_column: str = "label"
    labels: tuple[str, ...] | None = None
    metric: str | None = None

    def build(self) -> Task:
        if (self.train is None) != (self.test is None):
            raise ConfigError("give both --train-file and --test-file (or neither)")
        if self.name in TASKS:
            task = TASKS.get(self.name).with_format(self.template, self.label_words)
            if self.train is not None:
                fmt = task.causal or task.masked
                assert fmt is not None  # a Task always has a format
                fields = fmt.template.fields
                cols = {f: f for f in fields}
                cols.update(self.columns)
                task = replace(task, source=TableSource(self.train, self.test or "", cols, self.label_column, tuple(self.labels or ())))
            return replace(task, metric=self.metric) if self.metric else task
        if self.name != "custom" and not (self.template or self.train):
            raise ConfigError(
                TASKS.miss_message(self.name)
                + " For your own data use --task custom with --template, --label-words, --train-file and --test-file."
            )
        missing = [opt for opt, v in (("--template", self.template), ("--label-words", self.label_words),
                                      ("--train-file", self.train), ("--test-file", self.test)) if not v]
        if missing:
            raise ConfigError(f"a custom task needs {', '.join(missing)} (or --task-file FILE, or a registered --task)")
        return custom_task(
            template=self.template or "", label_words=self.label_words or (), train=self.train or "",
            test=self.test or "", columns=dict(self.columns), label_column=self.label_column,
            labels=self.labels, metric=self.metric or "accuracy", name=self.name,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"] = dict(self.columns)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskSpec":
        d = dict(data)
        for key in ("label_words", "labels"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "TaskSpec":
        """A ``.toml``/``.json`` file with keys template, label_words, train, test and optionally
        name, columns, label_column, labels, metric. Relative data paths are relative to the file."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"task file {str(p)!r} not found")
        try:
            cfg = tomllib.loads(p.read_text("utf-8")) if p.suffix == ".toml" else json.loads(p.read_text("utf-8"))
        except ValueError as exc:
            raise ConfigError(f"task file {str(p)!r} cannot be parsed: {exc}") from exc
        allowed = {f for f in cls.__dataclass_fields__}
        extra = set(cfg) - allowed
        if extra:
            raise ConfigError(f"task file {str(p)!r}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
        for key in ("label_words", "labels"):  # "a, b" strings, as on the command line
            if isinstance(cfg.get(key), str):
                cfg[key] = [w.strip() for w in cfg[key].split(",")]
        for key in ("train", "test"):
            if cfg.get(key) and not Path(cfg[key]).is_absolute():
                cfg[key] = str((p.parent / cfg[key]).resolve())
        spec = cls.from_dict(cfg)
        spec.build()  # fail now, with the file's name in view
        return spec
