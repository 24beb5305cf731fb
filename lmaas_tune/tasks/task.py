"""A task: prompt formats per model kind, a data source and a metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from lmaas_tune.backends.base import ModelKind, ScoringBatch
from lmaas_tune.errors import ConfigError, TemplateError, UnknownNameError, VerbalizerError
from .data import Example, HubSource, TableSource
from .metrics import METRICS
from .template import PromptFormat
from .verbalizer import LABEL_SEP, WORD_SEP, Verbalizer, VerbalizerLike

#: the content-free inputs of contextual calibration (Zhao et al., 2021): inputs that say nothing about
#: any label, so the label scores the model gives them are its bias towards each label
CONTENT_FREE = ("N/A", "", "[MASK]")


@dataclass(frozen=True)
class Task:
    """What to classify, how to ask a masked or a causal LM about it, and how to score it.

    ``verbalizers`` are other label words registered for the task by name (``--verbalizer NAME``),
    each for both model kinds; the formats' own label words are the default. ``calibration`` holds
    content-free inputs (:data:`CONTENT_FREE`; empty: no calibration): each is written into every
    template field and scored beside the real inputs, and the label scores it gets are taken off
    theirs (:class:`~lmaas_tune.tuning.evaluation.LabelledBatch`, docs/method.md).
    """

    name: str
    description: str
    source: TableSource | HubSource
    masked: PromptFormat | None = None
    causal: PromptFormat | None = None
    metric: str = "accuracy"
    verbalizers: Mapping[str, Verbalizer] = field(default_factory=dict)
    calibration: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        METRICS.get(self.metric)
        formats = [f for f in (self.masked, self.causal) if f is not None]
        if not formats:
            raise ConfigError(f"task {self.name!r} needs a prompt format")
        if len({f.verbalizer.num_classes for f in formats}) != 1:
            raise ConfigError(f"task {self.name!r}: its prompt formats disagree on the number of labels")
        for name, verbalizer in self.verbalizers.items():
            if verbalizer.num_classes != formats[0].verbalizer.num_classes:
                raise ConfigError(f"task {self.name!r}: its verbalizer {name!r} has {verbalizer.num_classes} labels, "
                                  f"the task {formats[0].verbalizer.num_classes}")

    @property
    def _masked_or_causal(self) -> PromptFormat:
        """The masked format if there is one, else the causal one (``__post_init__`` ensures one)."""
        fmt = self.masked or self.causal
        assert fmt is not None
        return fmt

    @property
    def num_labels(self) -> int:
        return self._masked_or_causal.verbalizer.num_classes

    def format_for(self, kind: ModelKind) -> PromptFormat:
        fmt = self.masked if kind is ModelKind.MASKED else self.causal
        if fmt is None:
            fmt = self.causal if kind is ModelKind.MASKED else self.masked
            assert fmt is not None
        fmt.template.check_kind(kind)
        return fmt

    def with_format(self, template: str | None = None, label_words: VerbalizerLike | None = None) -> "Task":
        """The same task with the template and/or label words replaced (for both model kinds).

        ``label_words`` as :meth:`Verbalizer.of` reads them: ``"bad,great"``, or several words per
        label, ``"negative|bad,positive|good"``."""
        if template is None and not label_words:
            return self
        given = Verbalizer.of(label_words) if label_words else None
        if given is not None and given.num_classes != self.num_labels:
            raise VerbalizerError(
                f"task {self.name!r} has {self.num_labels} labels but the label words {str(given)!r} name "
                f"{given.num_classes}; give one entry per label, in label order: '{LABEL_SEP}' separates labels, "
                f"'{WORD_SEP}' the words of one label (e.g. '{_example((self.causal or self._masked_or_causal).verbalizer)}')"
            )

        def swap(cur: PromptFormat) -> PromptFormat:
            return PromptFormat.of(template or cur.template.text, given or cur.verbalizer)

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
        return task

    def with_verbalizer(self, name: str) -> "Task":
        """The same task read with its label words registered as ``name`` (see ``verbalizers``)."""
        if name not in self.verbalizers:
            known = ", ".join(self.verbalizers)
            raise UnknownNameError(
                f"task {self.name!r} has no verbalizer {name!r}; "
                + (f"registered: {known}" if known else "it registers none")
                + " (`lmaas-tune tasks` lists them), or give your own words with --label-words")
        return self.with_format(label_words=self.verbalizers[name])

    def with_calibration(self, inputs: Sequence[str] | None = None) -> "Task":
        """The same task with its label scores calibrated on ``inputs`` (default :data:`CONTENT_FREE`;
        empty: calibration off)."""
        return replace(self, calibration=tuple(CONTENT_FREE if inputs is None else inputs))

    def content_free(self) -> list[Example]:
        """One example per calibration input, the input written into every template field."""
        fields = self._masked_or_causal.template.fields
        return [Example({f: text for f in fields}, 0) for text in self.calibration]

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


def _example(verbalizer: Verbalizer) -> str:
    """``"negative|...,positive|..."``: the syntax, shown with a task's own label names."""
    return LABEL_SEP.join(f"{name}{WORD_SEP}..." for name in verbalizer.names)


def custom_task(
    *,
    template: str,
    label_words: VerbalizerLike,
    train: str,
    test: str,
    columns: Mapping[str, str] | None = None,
    label_column: str = "label",
    labels: Sequence[str] | str | None = None,
    metric: str = "accuracy",
    name: str = "custom",
) -> Task:
    """A task from a template string, label words (``"bad,great"``; several per label as
    ``"negative|bad,positive|good"``) and local files.

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
