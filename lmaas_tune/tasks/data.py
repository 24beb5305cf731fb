"""Labelled examples and the readers that make them: TSV, CSV, JSONL, shipped files, HF datasets."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lmaas_tune.errors import ConfigError, DataError

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Example:
    """One labelled input: template field values and the class index (verbalizer order)."""

    texts: Mapping[str, str]
    label: int


def _builtin_path(name: str) -> Path:
    ref = resources.files("lmaas_tune") / "data" / name
    return Path(str(ref))


def absolute_data_path(location: str | None) -> str | None:
    """A data path made absolute (built-in data stays as named), so a stored run resumes from any
    working directory."""
    if location is None or location.startswith(BUILTIN_PREFIX):
        return location
    return str(Path(os.path.expanduser(location)).resolve())


def resolve_path(location: str) -> Path:
    """``builtin:sst2/train.tsv`` names a file shipped in the package; anything else is a path."""
    if location.startswith(BUILTIN_PREFIX):
        return _builtin_path(location[len(BUILTIN_PREFIX):])
    return Path(os.path.expanduser(location))


def read_rows(location: str) -> list[dict[str, str]]:
    """Read a table with a header (``.tsv``, ``.csv``) or JSON lines (``.jsonl``/``.json``)."""
    path = resolve_path(location)
    if not path.is_file():
        raise DataError(f"data file {location!r} not found; check the path (looked at {path})")
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:  # -sig: a byte-order mark is not part of the header
            if suffix in (".jsonl", ".json"):
                rows = []
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{location}: line {lineno} is not valid JSON ({exc.msg})") from exc
                    if not isinstance(obj, dict):
                        raise DataError(f"{location}: line {lineno} must be a JSON object")
                    rows.append({str(k): "" if v is None else str(v) for k, v in obj.items()})
            elif suffix in (".tsv", ".csv", ".txt"):
                if suffix == ".csv":
                    reader = csv.reader(fh)
                else:
                    reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
                table = [r for r in reader if r]
                if not table:
                    raise DataError(f"data file {location!r} is empty; it needs a header row and examples")
                header = [h.strip() for h in table[0]]
                rows = []
                for lineno, r in enumerate(table[1:], 2):
                    if len(r) != len(header):
                        raise DataError(
                            f"{location}: row {lineno} has {len(r)} fields, the header has {len(header)}"
                            + ("; TSV files are read without quoting" if suffix != ".csv" else "")
                        )
                    rows.append(dict(zip(header, r)))
            else:
                raise DataError(
                    f"data file {location!r} has unknown type {suffix!r}; use .tsv, .csv or .jsonl"
                )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"data file {location!r} is not UTF-8 (byte {exc.start}); re-save it as UTF-8"
        ) from exc
    except csv.Error as exc:
        raise DataError(f"data file {location!r} is not a readable table ({exc}); check its format") from exc
    except OSError as exc:
        raise DataError(f"cannot read data file {location!r} ({exc.strerror or exc}); check its permissions") from exc
    if not rows:
        raise DataError(f"data file {location!r} holds no examples")
    return rows


@dataclass(frozen=True)
class TableSource:
    """Train and test files plus how their columns map to template fields and labels.

    ``columns`` maps template field -> column name. ``label_values`` lists the raw label values
    in verbalizer order; empty means "infer" (sorted, numerically when all are integers).
    """

    train: str
    test: str
    columns: Mapping[str, str]
    label_column: str = "label"
    label_values: tuple[str, ...] = ()

    def load(self, split: str, num_labels: int) -> list[Example]:
        location = self.train if split == "train" else self.test
        rows = read_rows(location)
        needed = [*self.columns.values(), self.label_column]
        missing = [c for c in needed if c not in rows[0]]
        if missing:
            raise DataError(
                f"{location}: missing column(s) {missing}; it has {list(rows[0])}. Map the template's fields "
                f"with --column FIELD=COLUMN and the label with --label-column"
            )
        values = self.label_values or infer_label_values(r[self.label_column] for r in rows)
        if len(values) != num_labels:
            raise DataError(
                f"{location}: found {len(values)} label value(s) {list(values)} but the task has "
                f"{num_labels} label words; give one label word per label (or --labels to map them)"
            )
        index = {v: i for i, v in enumerate(values)}
        out = []
        for lineno, r in enumerate(rows, 2):
            raw = r[self.label_column].strip()
            if raw not in index:
                raise DataError(
                    f"{location}: row {lineno} has label {raw!r}, not one of {list(values)}; "
                    f"fix the row or the label list"
                )
            out.append(Example({f: r[c].strip() for f, c in self.columns.items()}, index[raw]))
        return out


def infer_label_values(raw: Iterable[object]) -> tuple[str, ...]:
    vals = sorted({str(v).strip() for v in raw})
    if all(v.lstrip("-").isdigit() for v in vals):
        vals.sort(key=int)
    return tuple(vals)


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face ``datasets`` dataset (online, or from the local datasets cache)."""

    dataset: str
    config: str | None
    train_split: str
    test_split: str
    columns: Mapping[str, str]
    label_column: str = "label"
    label_values: tuple[str, ...] = ()
    drop_labels: tuple[str, ...] = field(default=("-1",))

    def load(self, split: str, num_labels: int) -> list[Example]:
        try:
            import datasets
        except ImportError as exc:
            raise ConfigError(
                f"task data comes from the Hugging Face dataset {self.dataset!r}; install "
                f"`pip install 'lmaas-tune[hub]'` and go online, or pass --train-file/--test-file"
            ) from exc
        name = self.train_split if split == "train" else self.test_split
        try:
            ds = datasets.load_dataset(self.dataset, self.config, split=name)
        except Exception as exc:  # network, cache miss, missing config
            raise DataError(
                f"could not load {self.dataset}/{self.config or ''}:{name} ({exc}); offline, pass "
                f"local files with --train-file/--test-file"
            ) from exc
        values = self.label_values or tuple(str(i) for i in range(num_labels))
        index = {v: i for i, v in enumerate(values)}
        out = []
        for r in ds:
            raw = str(r[self.label_column])
            if raw in self.drop_labels:
                continue
            if raw not in index:
                raise DataError(f"{self.dataset}: label {raw!r} is not one of {list(values)}")
            out.append(Example({f: str(r[c]).strip() for f, c in self.columns.items()}, index[raw]))
        return out
