"""What a run is: the typed record of ``config.json``, written once when the run starts.

:class:`RunConfig` is the only reader and writer of that file. It holds the task, the tuning
settings, the backend and the model the run was tuned on, fingerprints of its data files, whether
the manual prompt is scored beside the tuned one (``baseline``), free-form ``notes`` a caller
attaches (a service's job id, say; lmaas-tune never reads them), and the format version.

Format 1 (the only one so far) is what every earlier lmaas-tune wrote: keys ``version``,
``tune``, and, where the run had them, ``task``, ``backend``, ``model``, ``baseline``, ``data``;
any other top-level key is kept as a note. A missing ``baseline`` means False (the library's
default when it wrote no flag); a missing ``version`` means 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmaas_tune.backends.base import BackendInfo
from lmaas_tune.backends.factory import BackendSettings
from lmaas_tune.errors import ConfigError, RunDirectoryError
from lmaas_tune.methods import TuneConfig
from lmaas_tune.tasks.data import TableSource, resolve_path
from lmaas_tune.tasks.spec import TaskSpec
from lmaas_tune.tasks.task import Task

from .atomic import atomic_write

#: the file a run's record lives in
CONFIG = "config.json"
FORMAT = 1
_KEYS = ("version", "tune", "task", "backend", "model", "baseline", "data")


@dataclass(frozen=True)
class ModelRecord:
    """The model a run was tuned on (checked again when the run is resumed or its prompt used)."""

    id: str
    kind: str
    hidden_size: int
    dtype: str
    device: str

    @classmethod
    def of(cls, info: BackendInfo) -> "ModelRecord":
        return cls(info.model_id, info.kind.value, info.hidden_size, info.dtype, info.device)

    def check(self, info: BackendInfo, where: str) -> None:
        """Refuse a backend whose model is not this one (the device may differ)."""
        now = ModelRecord.of(info)
        diff = [f"{k} {getattr(self, k)!r} vs {getattr(now, k)!r}" for k in ("id", "kind", "hidden_size", "dtype")
                if getattr(self, k) != getattr(now, k)]
        if diff:
            raise ConfigError(f"{where} was tuned on another model than this backend serves ({'; '.join(diff)}); "
                              f"use the same model (and --dtype) the run used")


def data_fingerprint(task: Task) -> dict[str, str] | None:
    """SHA-256 of the task's train and test files (``None`` for hub datasets)."""
    src = task.source
    if not isinstance(src, TableSource):
        return None
    out = {}
    for split, location in (("train", src.train), ("test", src.test)):
        try:
            out[split] = hashlib.sha256(resolve_path(location).read_bytes()).hexdigest()
        except OSError:  # the data readers report a missing or unreadable file, with its fix
            continue
    return out


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's result, and what it was run on (see the module docstring)."""

    tune: TuneConfig
    task: TaskSpec | None = None
    backend: BackendSettings | None = None
    model: ModelRecord | None = None
    baseline: bool = False
    data: Mapping[str, str] | None = None
    notes: Mapping[str, Any] = field(default_factory=dict)
    version: int = FORMAT

    def __post_init__(self) -> None:
        clash = sorted(set(self.notes) & set(_KEYS))
        if clash:
            raise ConfigError(f"run notes may not use the record's own keys {clash}; name them otherwise")

    def check_data(self, task: Task, where: str) -> None:
        """Refuse to continue when the task's data files changed since the run started."""
        if not self.data:
            return
        now = data_fingerprint(task) or {}
        changed = [split for split in self.data if now.get(split) != self.data[split]]
        if changed:
            raise RunDirectoryError(
                f"the {' and '.join(changed)} file(s) of {where} changed since the run started "
                f"(SHA-256 differs); restore them to resume, or start a new run"
            )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {**self.notes, "version": self.version, "tune": self.tune.to_dict(),
                             "baseline": self.baseline}
        if self.task is not None:
            d["task"] = self.task.to_dict()
        if self.backend is not None:
            d["backend"] = self.backend.to_dict()
        if self.model is not None:
            d["model"] = asdict(self.model)
        if self.data is not None:
            d["data"] = dict(self.data)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = CONFIG) -> "RunConfig":
        if not isinstance(d, Mapping) or "tune" not in d:
            raise RunDirectoryError(f"{where} does not describe a fit (no tuning settings)")
        version = int(d.get("version", FORMAT))
        if version != FORMAT:
            raise RunDirectoryError(f"{where} has format {version}; this lmaas-tune reads format {FORMAT} (upgrade it)")
        try:
            return cls(
                tune=TuneConfig.from_dict(d["tune"]),
                task=None if d.get("task") is None else TaskSpec.from_dict(d["task"]),
                backend=None if d.get("backend") is None else BackendSettings.from_dict(d["backend"]),
                model=None if not isinstance(d.get("model"), Mapping) else ModelRecord(**d["model"]),
                baseline=bool(d.get("baseline", False)),
                data=None if d.get("data") is None else dict(d["data"]),
                notes={k: v for k, v in d.items() if k not in _KEYS},
                version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirectoryError(f"{where} does not describe a fit ({type(exc).__name__}: {exc})") from None

    def write(self, directory: Path) -> None:
        """Store the record in ``directory`` (atomically)."""
        atomic_write(directory / CONFIG, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())

    @classmethod
    def read(cls, directory: Path) -> "RunConfig":
        """The record stored in ``directory`` (a :class:`RunDirectoryError` naming the problem otherwise)."""
        path = directory / CONFIG
        if not path.is_file():
            raise RunDirectoryError(f"{directory} is not a run directory (no {CONFIG}); pass the --output of a fit")
        try:
            data = json.loads(path.read_text("utf-8"))
        except ValueError as exc:
            raise RunDirectoryError(f"{path} is corrupt ({exc})") from exc
        return cls.from_dict(data, str(path))

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / CONFIG).is_file()
