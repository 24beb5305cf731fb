"""Scoring a fixed prompt (or none) on a labelled set, and fitting inputs to the model limit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lmaas_tune.backends.base import Backend, ModelKind, ScoringBatch
from lmaas_tune.errors import ConfigError, DataError
from lmaas_tune.methods.losses import predictions
from lmaas_tune.runs.results import Evaluation
from lmaas_tune.tasks.data import Example
from lmaas_tune.tasks.metrics import METRICS
from lmaas_tune.tasks.task import Task
from lmaas_tune.tasks.verbalizer import Verbalizer

from .ledger import BudgetLedger
from .scheduler import PopulationScheduler

log = logging.getLogger("lmaas_tune")


@dataclass(frozen=True)
class LabelledBatch:
    """A rendered batch, its gold labels, how many inputs were dropped as too long, how the
    batch's label words group into labels (``None``: one word per label, in the batch's order), and
    how many content-free inputs for calibration end the batch (after the labelled ones).

    Calibration (contextual calibration, Zhao et al. 2021) rides in the same calls as the inputs:
    the content-free rows are scored with the same prompt as the inputs, so each candidate prompt
    is calibrated with its own bias, and no call is added to the budget.
    """

    batch: ScoringBatch
    labels: np.ndarray
    dropped: int = 0
    verbalizer: Verbalizer | None = None
    content_free: int = 0

    def __post_init__(self) -> None:
        if self.verbalizer is not None and self.verbalizer.words != self.batch.label_words:
            raise ValueError(f"the verbalizer's words {list(self.verbalizer.words)} are not the batch's "
                             f"{list(self.batch.label_words)}")
        if len(self.labels) + self.content_free != len(self.batch):
            raise ValueError(f"{len(self.labels)} labels and {self.content_free} content-free inputs for a batch "
                             f"of {len(self.batch)}")

    def __len__(self) -> int:
        """The labelled inputs (the content-free ones are not counted)."""
        return len(self.labels)

    def class_scores(self, scores: np.ndarray) -> np.ndarray:
        """Label scores ``[..., N, C]`` of the labelled inputs from a backend's word scores
        ``[..., N + K, W]`` on this batch: the words grouped into labels (:meth:`Verbalizer.aggregate`;
        unchanged with one word per label), then, with K content-free inputs, each label's
        log-probability on them (softmax over labels, averaged over the K inputs; :func:`bias`) taken off. Every
        loss, metric and prediction reads these, never the word scores."""
        x = scores if self.verbalizer is None else self.verbalizer.aggregate(scores)
        k = self.content_free
        if not k:
            return x
        return x[..., :-k, :] - bias(x[..., -k:, :])


def bias(scores: np.ndarray) -> np.ndarray:
    """``[..., 1, C]``: each label's log-probability (softmax over labels) on the K content-free rows
    of ``[..., K, C]``, averaged over the rows: how much more the model says each label with nothing
    to go on. Taking it off the label scores divides each label's probability by it (contextual
    calibration), with the K inputs' probabilities combined by their geometric mean, so a prompt
    that adds a constant to one label's score on every input is calibrated back exactly."""
    x = np.asarray(scores, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    logp = x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
    return logp.mean(axis=-2, keepdims=True)


def labelled(task: Task, kind: ModelKind, batch: ScoringBatch, labels: np.ndarray, dropped: int = 0) -> LabelledBatch:
    """``batch`` (rendered from ``task``) with its labels, its verbalizer, and ``task``'s content-free
    inputs appended when it calibrates."""
    extra = task.content_free()
    if extra:
        batch = ScoringBatch(batch.queries + task.render(extra, kind).queries, batch.label_words)
    return LabelledBatch(batch, labels, dropped, task.format_for(kind).verbalizer, len(extra))


ON_LONG = ("drop", "error")


def check_on_long(value: str) -> str:
    if value not in ON_LONG:
        raise ConfigError(f"--on-long must be {' or '.join(ON_LONG)}; got {value!r}")
    return value


async def prepare(
    backend: Backend, task: Task, examples: Sequence[Example], prompt_length: int, *, what: str = "examples",
    on_long: str = "drop",
) -> LabelledBatch:
    """Render ``examples`` for the backend's model kind. Inputs that cannot fit the model limit with
    the prompt are dropped and counted (``on_long="drop"``) or refused (``"error"``)."""
    check_on_long(on_long)
    if not examples:
        raise DataError(f"no {what} to score")
    kind = backend.info.kind
    batch = task.render(examples, kind)
    extra = task.render(task.content_free(), kind).queries if task.calibration else ()
    measured = np.array(await backend.token_lengths(ScoringBatch(batch.queries + extra, batch.label_words)))
    lengths, content_free = measured[:len(examples)], measured[len(examples):]
    if (content_free + prompt_length > backend.info.max_length).any():
        raise DataError(f"the content-free inputs of calibration do not fit the model limit of "
                        f"{backend.info.max_length} tokens with a {prompt_length}-token prompt; shorten the "
                        f"template or lower --prompt-length")
    keep = np.flatnonzero(lengths + prompt_length <= backend.info.max_length)
    dropped = len(examples) - len(keep)
    if dropped and on_long == "error":
        raise DataError(
            f"{dropped} of {len(examples)} {what} are longer than the model limit of {backend.info.max_length} "
            f"tokens with a {prompt_length}-token prompt (longest: {int(lengths.max()) + prompt_length}); shorten them, "
            f"lower --prompt-length, or pass --on-long drop to skip them"
        )
    if dropped:
        log.warning(
            "dropped %d of %d %s longer than the model limit of %d tokens (with a %d-token prompt)",
            dropped, len(examples), what, backend.info.max_length, prompt_length,
        )
        if len(keep) == 0:
            raise DataError(f"every one of the {len(examples)} {what} is longer than the model limit of "
                            f"{backend.info.max_length} tokens; shorten them or lower --prompt-length")
        batch = batch.subset([int(i) for i in keep])
    labels = np.array([examples[int(i)].label for i in keep], dtype=np.int64)
    return labelled(task, kind, batch, labels, dropped)


def summarise(scores: np.ndarray, data: LabelledBatch, metric: str) -> Evaluation:
    """Metric of a backend's word scores ``[N, W]`` on ``data`` against its labels (the words
    grouped into labels by ``data``'s verbalizer first)."""
    pred = predictions(data.class_scores(scores))
    value = METRICS.get(metric)(pred, data.labels)
    acc = METRICS.get("accuracy")(pred, data.labels)
    return Evaluation(metric, float(value), float(acc), len(data), data.dropped, tuple(int(p) for p in pred))


async def score_prompt(
    backend: Backend,
    prompt: np.ndarray | None,
    data: LabelledBatch,
    *,
    chunk: int = 64,
    progress: Callable[[int, int], None] | None = None,
    ledger: BudgetLedger | None = None,
    concurrency: int | None = None,
) -> np.ndarray:
    """Word scores ``[N, W]`` (the backend's, one per label word; :meth:`LabelledBatch.class_scores`
    groups them into labels) of one prompt (``[L, D]``, deep ``[layers, L, D]``, or None) on ``data``,
    ``chunk`` examples per call, as many calls at once as the backend allows (or ``concurrency``),
    through the :class:`~.scheduler.PopulationScheduler`; recorded in ``ledger`` as uncharged."""
    scheduler = PopulationScheduler(backend, ledger or BudgetLedger.for_scoring(), concurrency=concurrency)
    return await scheduler.score_examples(prompt, data.batch, chunk=chunk, progress=progress)


async def evaluate_prompt(
    backend: Backend,
    task: Task,
    examples: Sequence[Example],
    prompt: np.ndarray | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    on_long: str = "drop",
    ledger: BudgetLedger | None = None,
    concurrency: int | None = None,
) -> Evaluation:
    """The task metric of ``prompt`` (``None``: the manual template alone) on ``examples``; the
    scoring is recorded in ``ledger`` (uncharged) when one is given."""
    plen = 0 if prompt is None else int(np.asarray(prompt).shape[-2])  # [L, D], or deep [layers, L, D]
    data = await prepare(backend, task, examples, plen, what="test examples", on_long=on_long)
    logits = await score_prompt(backend, prompt, data, progress=progress, ledger=ledger, concurrency=concurrency)
    return summarise(logits, data, task.metric)
