"""Using a tuned prompt: label new texts with a run's best prompt.

Inputs are rows of template field values. They come from TSV, CSV or JSON-lines text (a header
or keys naming the template's fields, or the columns the task maps them from; other columns are
ignored) or from plain lines, one text per line, for templates with a single field. Each row gets
a :class:`Prediction`: the label the prompt picks, named by its (first) label word, and the
softmax over the labels (the same readout ``evaluate`` scores; a label of several words pools them,
see :meth:`~lmaas_tune.tasks.verbalizer.Verbalizer.aggregate`). Rows are scored ``batch_size`` at a time, in order.
An input too long for the model with the prompt is not scored: its prediction says so.

    async with LocalBackend.load(...) as backend:
        for p in await predict("runs/sst2", backend, [{"sentence": "a great film"}]):
            print(p.label, p.probabilities)
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmaas_tune.backends.base import Backend
from lmaas_tune.errors import DataError
from lmaas_tune.tasks.data import Example, TableSource
from lmaas_tune.tasks.task import Task
from lmaas_tune.runs.saved import SavedRun

from .evaluation import labelled, score_prompt
from .ledger import BudgetLedger

FORMATS = ("auto", "lines", "tsv", "csv", "jsonl")


@dataclass(frozen=True)
class Prediction:
    """The label a tuned prompt gives one input (``None`` when the input was too long to score):
    ``label`` is the label's first label word, ``probabilities`` the softmax over the labels, by name."""

    label: str | None
    label_index: int | None
    probabilities: dict[str, float] | None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "label_index": self.label_index, "probabilities": self.probabilities}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def template_fields(task: Task) -> tuple[str, ...]:
    """The fields the task's templates read (both model kinds), in order."""
    out: list[str] = []
    for fmt in (task.masked, task.causal):
        if fmt is not None:
            out += [f for f in fmt.template.fields if f not in out]
    return tuple(out)


def parse_inputs(text: str, task: Task, fmt: str = "auto", *, name: str = "the input") -> list[dict[str, str]]:
    """Rows of template field values from ``text`` in format ``fmt`` (see the module docstring).

    ``auto``: JSON lines when the first non-empty line starts with ``{``, plain lines otherwise.
    """
    if fmt not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    fields = template_fields(task)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{name} holds no texts")
    if fmt == "auto":
        fmt = "jsonl" if lines[0].lstrip().startswith("{") else "lines"
    if fmt == "lines":
        if len(fields) != 1:
            raise DataError(f"the template needs fields {list(fields)}; plain lines give one text each: "
                            f"use TSV, CSV or JSON lines with those columns")
        return [{fields[0]: ln.strip()} for ln in lines]
    if fmt == "jsonl":
        records: list[dict[str, Any]] = []
        for i, ln in enumerate(lines, 1):
            try:
                obj = json.loads(ln)
            except ValueError as exc:
                raise DataError(f"{name}: line {i} is not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{name}: line {i} must be a JSON object")
            records.append({str(k): "" if v is None else str(v) for k, v in obj.items()})
    else:
        reader = csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t",
                                quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
        records = [dict(r) for r in reader]
    return [_row(r, i, task, name) for i, r in enumerate(records, 1)]


def _row(record: Mapping[str, Any], i: int, task: Task, name: str) -> dict[str, str]:
    columns = dict(task.source.columns) if isinstance(task.source, TableSource) else {}
    out = {}
    for field in template_fields(task):
        for key in (field, columns.get(field, field)):
            if record.get(key) is not None:
                out[field] = str(record[key])
                break
        else:
            raise DataError(f"{name}: row {i} has no {field!r} column (it has {sorted(record)}); "
                            f"name the columns after the template's fields")
    return out


def read_inputs(source: str | Path | None, task: Task, fmt: str = "auto") -> list[dict[str, str]]:
    """:func:`parse_inputs` of a file (``None`` or ``-``: standard input); ``auto`` goes by the file suffix."""
    import sys

    if source is None or str(source) == "-":
        return parse_inputs(sys.stdin.read(), task, fmt, name="standard input")
    path = Path(source)
    if fmt == "auto":
        fmt = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "auto")
    try:
        text = path.read_text("utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8; re-save it as UTF-8") from None
    return parse_inputs(text, task, fmt, name=str(path))


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


async def iter_predictions(
    run: str | Path | SavedRun, backend: Backend, rows: Sequence[Mapping[str, str]], *, batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None, ledger: BudgetLedger | None = None,
) -> AsyncIterator[list[Prediction]]:
    """The predictions of ``rows``, one list per batch of ``batch_size`` rows, in input order.

    Each batch is scored through the scheduler, as many requests at once as the backend allows,
    and recorded in ``ledger`` (one ``eval_calls`` per batch) when one is given."""
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1; got {batch_size}")
    saved = run if isinstance(run, SavedRun) else SavedRun.load(run)
    saved.check_model(backend.info)
    ledger = ledger or BudgetLedger.for_scoring()
    task = saved.task.build()
    prompt = saved.prompt()
    verbalizer = task.format_for(backend.info.kind).verbalizer
    names = verbalizer.names
    for lo in range(0, len(rows), batch_size):
        part = rows[lo:lo + batch_size]
        batch = task.render([Example(dict(r), 0) for r in part], backend.info.kind)
        lengths = np.asarray(await backend.token_lengths(batch))
        fits = [int(i) for i in np.flatnonzero(lengths + prompt.shape[-2] <= backend.info.max_length)]
        out: list[Prediction] = [Prediction(None, None, None, f"longer than the model limit of {backend.info.max_length} "
                                                              f"tokens with the prompt") for _ in part]
        if fits:
            data = labelled(task, backend.info.kind, batch.subset(fits), np.zeros(len(fits), dtype=np.int64))
            probs = _softmax(data.class_scores(await score_prompt(backend, prompt, data, chunk=batch_size,
                                                                  ledger=ledger)))
            for k, i in enumerate(fits):
                best = int(probs[k].argmax())
                out[i] = Prediction(names[best], best, {w: float(p) for w, p in zip(names, probs[k])})
        if progress:
            progress(lo + len(part), len(rows))
        yield out


async def predict(
    run: str | Path | SavedRun, backend: Backend, rows: Sequence[Mapping[str, str]], *, batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None, ledger: BudgetLedger | None = None,
) -> list[Prediction]:
    """Label ``rows`` (template field values) with the best prompt of the run in ``run``."""
    out: list[Prediction] = []
    async for part in iter_predictions(run, backend, rows, batch_size=batch_size, progress=progress, ledger=ledger):
        out.extend(part)
    return out
