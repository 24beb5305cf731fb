"""A task: prompt formats per model kind, a data source and a metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from lmaas_tune.backends.base import ModelKind, ScoringBatch
from lmaas_tune.errors import ConfigError, TemplateError
from .data import Example, HubSource, TableSource
from .metrics import METRICS
from .template import PromptFormat


@dataclass(frozen=True)
class Task:
    """What to classify, how to ask a masked or a causal LM about it, and how to score it."""

    name: str
    description: str
    source: TableSource | HubSource
    masked: PromptFormat | None = None
    causal: PromptFormat | None = None
    metric: str = "accuracy"

    def __post_init__(self) -> None:
        METRICS.get(self.metric)
        formats = [f for f in (self.masked, self.causal) if f is not None]
        if not formats:
            raise ConfigError(f"task {self.name!r} needs a prompt format")
        if len({len(f.label_words) for f in formats}) != 1:
            raise ConfigError(f"task {self.name!r}: its prompt formats disagree on the number of labels")

    @property
    def _masked_or_causal(self) -> PromptFormat:
        """The masked format if there is one, else the causal one (``__post_init__`` ensures one)."""
        fmt = self.masked or self.causal
        assert fmt is not None
        return fmt

    @property
    def num_labels(self) -> int:
        return len(self._masked_or_causal.label_words)

    def format_for(self, kind: ModelKind) -> PromptFormat:
        fmt = self.masked if kind is ModelKind.MASKED else self.causal
        if fmt is None:
            fmt = self.causal if kind is ModelKind.MASKED else self.masked
            assert fmt is not None
        fmt.template.check_kind(kind)
        return fmt

    def with_format(
        self, template: str | None = None, label_words: Sequence[str] | str | None = None
    ) -> "Task":
        """The same task with the template and/or label words replaced (for both model kinds)."""
        if template is None and label_words is None:
            return self

        def swap(cur: PromptFormat) -> PromptFormat:
            return PromptFormat.of(template or cur.template.text, label_words or cur.label_words)

        if template is not None:  # one template serves both model kinds
            cur = self.causal or self.masked
            assert cur is not None  # __post_init__ ensures a format
            fmt = swap(cur)
            task = replace(self, masked=fmt, causal=fmt)
        else:
            task = replace(
                self,
                masked=swap(self.masked) if self.masked else None,
                causal=swap(self.causal) if self.causal else None,
            )
        if task.num_labels != self.num_labels:
            raise ConfigError(
                f"task {self.name!r} has {self.num_labels} labels but {task.num_labels} label words were given"
            )
        return task

    def load(self, split: str) -> list[Example]:
        """``split`` is ``"train"`` (the pool few-shot splits are drawn from) or ``"test"``."""
        examples = self.source.load(split, self.num_labels)
        fields = set(self._masked_or_causal.template.fields)
        if examples and not fields <= set(examples[0].texts):
            raise TemplateError(
                f"task {self.name!r}: the template needs field(s) {sorted(fields - set(examples[0].texts))} "
                f"that the data does not map; map them with --column FIELD=COLUMN"
            )
        return examples

    def render(self, examples: Sequence[Example], kind: ModelKind) -> ScoringBatch:
        fmt = self.format_for(kind)
        return ScoringBatch(tuple(fmt.template.render(e.texts) for e in examples), fmt.label_words)


def custom_task(
    *,
    template: str,
    label_words: Sequence[str] | str,
    train: str,
    test: str,
    columns: Mapping[str, str] | None = None,
    label_column: str = "label",
    labels: Sequence[str] | str | None = None,
    metric: str = "accuracy",
    name: str = "custom",
) -> Task:
    """A task from a template string, label words and local files.

    Template fields map to same-named columns unless ``columns`` says otherwise; ``labels`` lists the
    raw label values in label-word order (default: sorted, numerically if they are integers).
    """
    fmt = PromptFormat.of(template, label_words)
    cols = {f: f for f in fmt.template.fields}
    cols.update(columns or {})
    unknown = set(cols) - set(fmt.template.fields)
    if unknown:
        raise TemplateError(f"--column names field(s) {sorted(unknown)} that the template does not use")
    if isinstance(labels, str):
        labels = [v for v in labels.split(",") if v.strip()]
    source = TableSource(
        train=train,
        test=test,
        columns=cols,
        label_column=label_column,
        label_values=tuple(v.strip() for v in labels or ()),
    )
    return Task(name=name, description="custom task", source=source, masked=fmt, causal=fmt, metric=metric)
