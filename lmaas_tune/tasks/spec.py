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
from .verbalizer import LABEL_SEP, WORD_SEP


def split_words(text: str | None) -> tuple[str, ...] | None:
    """``"bad, great"`` -> ``("bad", "great")``; ``"negative|bad, positive|good"`` ->
    ``("negative|bad", "positive|good")``: one entry per label (``None`` for nothing). An empty
    entry stays, for the verbalizer to refuse with the label it belongs to."""
    if not text:
        return None
    return tuple(WORD_SEP.join(w.strip() for w in entry.split(WORD_SEP)) for entry in text.split(LABEL_SEP))


def _entries(value: Any) -> Any:
    """Label words as stored (one ``"a|b"`` entry per label), from a list whose items may also
    be lists of one label's words (``[["negative", "bad"], ["positive", "good"]]``)."""
    if value is None or isinstance(value, str):
        return value
    return tuple(WORD_SEP.join(str(w) for w in e) if isinstance(e, (list, tuple)) else e for e in value)


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
    (any other name, with template, label words and train/test files).

    ``label_words`` holds one entry per label; an entry of several words joins them with ``|``
    (``("negative|bad", "positive|good")``). ``verbalizer`` names label words the registered task
    registers instead (``"multi"``); it and ``label_words`` are alternatives. ``calibrate`` takes the
    scores of content-free inputs off the label scores (:meth:`Task.with_calibration`)."""

    name: str = "custom"
    template: str | None = None
    label_words: tuple[str, ...] | None = None
    train: str | None = None
    test: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    label_column: str = "label"
    labels: tuple[str, ...] | None = None
    metric: str | None = None
    verbalizer: str | None = None
    calibrate: bool = False

    def build(self) -> Task:
        task = self._build()
        return task.with_calibration() if self.calibrate else task

    def _build(self) -> Task:
        if (self.train is None) != (self.test is None):
            raise ConfigError("give both --train-file and --test-file (or neither)")
        if self.name in TASKS:
            task = TASKS.get(self.name)
            if self.verbalizer is not None:
                if self.label_words:
                    raise ConfigError(f"give --label-words or --verbalizer, not both (--verbalizer {self.verbalizer} "
                                      f"names label words the task comes with)")
                task = task.with_verbalizer(self.verbalizer)
            task = task.with_format(self.template, self.label_words)
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
        if self.verbalizer is not None:
            raise ConfigError("--verbalizer names label words a registered task comes with; a custom task has none: "
                              "give its label words with --label-words (several per label as 'negative|bad,positive|good')")
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
        for key, off in (("verbalizer", None), ("calibrate", False)):
            if d[key] == off:  # a record without them reads as before (and by an earlier lmaas-tune)
                del d[key]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskSpec":
        d = dict(data)
        d["label_words"] = _entries(d.get("label_words"))
        for key in ("label_words", "labels"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "TaskSpec":
        """A ``.toml``/``.json`` file with keys template, label_words, train, test and optionally
        name, columns, label_column, labels, metric, verbalizer. Relative data paths are relative to
        the file. ``label_words`` is ``"bad, great"``, ``"negative|bad, positive|good"``, or a list
        with one string (``"negative|bad"``) or one list of words per label."""
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
        if isinstance(cfg.get("label_words"), str):  # "a|b, c" as on the command line
            cfg["label_words"] = split_words(cfg["label_words"]) or ()
        if isinstance(cfg.get("labels"), str):
            cfg["labels"] = [w.strip() for w in cfg["labels"].split(",")]
        for key in ("train", "test"):
            if cfg.get(key) and not Path(cfg[key]).is_absolute():
                cfg[key] = str((p.parent / cfg[key]).resolve())
        spec = cls.from_dict(cfg)
        spec.build()  # fail now, with the file's name in view
        return spec
