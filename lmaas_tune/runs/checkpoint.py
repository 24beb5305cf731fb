"""Checkpoints: what a stopped run needs to continue exactly where it left off.

**The rule.** A generation counts once ``checkpoint.json`` names it. After every generation the
tuner (1) appends the generation's record to ``history.jsonl`` (fsync), (2) writes the optimiser
state to ``checkpoint-cma-NNNNNN.pkl``, then (3) replaces ``checkpoint.json`` atomically (temporary
file, fsync, rename): the commit point. Whatever happened after the last commit (a population half
scored, a dev check, a history line, ``best.json``) is dropped when the run continues and done
again. CMA-ES comes back with its RNG state, so it asks for the same candidates; they score the
same, so a resumed run ends exactly as an uninterrupted one (best z, scores, history, ledger). The
price is that the calls of a dropped generation are paid twice; a clean stop (a signal, a
cancelled task, an error) adds them up under ``discarded`` in ``checkpoint.json``.

``checkpoint.json`` (format 1) holds the generation and the tuning time so far, the ledger, the
loop state (the best prompt and its dev score, the candidate waiting for the next dev check, when
that check is due, the best train loss), the optimiser's JSON state (its RNG included) with the
name and SHA-256 of its state file, the projection spec, and ``status`` (``running`` or
``interrupted``, with what stopped it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lmaas_tune.errors import ConfigError, RunDirectoryError
from lmaas_tune.methods.optimizers.base import Optimizer
from lmaas_tune.projection import AnySpec, spec_from_dict

from .atomic import atomic_write
from .directory import RunDirectory
from .results import finite_or_none, inf_if_none


class BudgetLedger(Protocol):
    """The budget ledger as a checkpoint sees it (:class:`lmaas_tune.tuning.ledger.BudgetLedger`)."""

    def to_dict(self) -> dict[str, int]: ...

    def restore(self, saved: dict[str, int]) -> None: ...

log = logging.getLogger("lmaas_tune")

CHECKPOINT = "checkpoint.json"
FORMAT = 1
_STATE_FILE = re.compile(r"checkpoint-cma-\d{6}\.pkl")
_COUNTERS = ("calls", "attempts", "retries", "failures", "uncharged_calls", "bytes_up", "bytes_down")


@dataclass
class Candidate:
    """A prompt's z, its train loss, and the charged calls when it was found."""

    z: np.ndarray
    loss: float
    calls: int

    def to_dict(self) -> dict[str, Any]:
        return {"z": [float(v) for v in self.z], "loss": finite_or_none(self.loss), "calls": self.calls}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Candidate | None":
        if d is None:
            return None
        loss = inf_if_none(d["loss"])
        return cls(np.asarray(d["z"], dtype=np.float64), loss, int(d["calls"]))


@dataclass
class LoopState:
    """The fit loop's own state between generations."""

    next_check: int
    generation: int = 0
    best: Candidate | None = None
    best_dev: float | None = None
    best_generation: int | None = None  # the generation whose dev check kept ``best``
    pending: Candidate | None = None  # lowest train loss since the last dev check
    best_loss: float = math.inf
    elapsed: float = 0.0  # seconds of tuning so far, across resumes

    def to_dict(self) -> dict[str, Any]:
        return {"next_check": self.next_check, "generation": self.generation,
                "best": self.best.to_dict() if self.best else None, "best_dev": self.best_dev,
                "best_generation": self.best_generation, "pending": self.pending.to_dict() if self.pending else None,
                "best_loss": finite_or_none(self.best_loss), "elapsed_s": self.elapsed}

    def load(self, d: dict[str, Any]) -> None:
        self.next_check, self.generation = int(d["next_check"]), int(d["generation"])
        self.best, self.pending = Candidate.from_dict(d["best"]), Candidate.from_dict(d["pending"])
        self.best_dev = None if d["best_dev"] is None else float(d["best_dev"])
        self.best_generation = d["best_generation"]
        self.best_loss = inf_if_none(d["best_loss"])
        self.elapsed = float(d["elapsed_s"])


def save_checkpoint(run: RunDirectory, state: LoopState, ledger: BudgetLedger, optimizer: Optimizer,
                    projection: AnySpec, discarded: dict[str, int]) -> dict[str, Any]:
    """Commit the state after ``state.generation`` (see the module docstring); returns what was written."""
    opt_state, blob = optimizer.checkpoint()
    name = f"checkpoint-cma-{state.generation:06d}.pkl"
    atomic_write(run.path / name, blob)
    doc = {"format": FORMAT, "status": "running", "generation": state.generation, "loop": state.to_dict(),
           "ledger": ledger.to_dict(), "projection": projection.to_dict(), "discarded": dict(discarded),
           "optimizer": {"file": name, "sha256": hashlib.sha256(blob).hexdigest(), "state": opt_state}}
    _write(run, doc)
    run.remove_leftovers(keep={name})
    return doc


def mark_stopped(run: RunDirectory, doc: dict[str, Any], ledger: BudgetLedger, reason: str) -> None:
    """Record on the last commit that the run stopped, and what the dropped work had spent."""
    now = ledger.to_dict()
    discarded = {k: int(doc["discarded"].get(k, 0)) + max(0, now[k] - int(doc["ledger"][k])) for k in _COUNTERS}
    try:
        _write(run, {**doc, "status": "interrupted", "stopped_by": reason, "discarded": discarded})
    except Exception as exc:  # noqa: BLE001 - the last commit stands; do not mask what stopped the run
        log.warning("could not mark the checkpoint as interrupted (%s); it stays valid", exc)


def _write(run: RunDirectory, doc: dict[str, Any]) -> None:
    data = (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
    atomic_write(run.path / CHECKPOINT, data)


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint read back, its optimiser file checked against the recorded SHA-256."""

    doc: dict[str, Any]
    blob: bytes = field(repr=False)
    where: str

    @property
    def generation(self) -> int:
        return int(self.doc["generation"])

    @property
    def discarded(self) -> dict[str, int]:
        return {k: int(self.doc["discarded"].get(k, 0)) for k in _COUNTERS}

    def projection(self, rebuilt: AnySpec) -> AnySpec:
        """The run's projection spec, checked against the one ``rebuilt`` for the model at hand.

        The scale derives from the model's embedding std, which another device may compute a few
        ulps apart: it may differ by a relative 1e-5 (the stored spec is used, so the prompts stay
        exactly the run's); any other difference means another model. The per-layer scales of a
        deep projection come from hidden states measured on the train batch, which another device
        or precision computes less exactly: they may differ by a relative 1e-2.
        """
        try:
            saved = spec_from_dict(self.doc["projection"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirectoryError(f"{self.where} is malformed ({type(exc).__name__}: {exc})") from None
        mine, theirs = rebuilt.to_dict(), saved.to_dict()
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k) and not _close(k, mine.get(k), theirs.get(k)))
        if changed:
            raise ConfigError(
                f"{self.where}: the projection rebuilt for this model differs from the run's in {changed} "
                f"({', '.join(f'{k} {theirs.get(k)} vs {mine.get(k)}' for k in changed)}); this is not the model "
                f"the run was tuned on"
            )
        return saved

    def restore(self, state: LoopState, ledger: BudgetLedger, optimizer: Optimizer) -> None:
        """Put the loop state, the ledger and the optimiser back as they were at the commit."""
        try:
            state.load(self.doc["loop"])
            ledger.restore(self.doc["ledger"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirectoryError(f"{self.where} is malformed ({type(exc).__name__}: {exc})") from None
        optimizer.restore(self.doc["optimizer"]["state"], self.blob, where=self.where)


def _close(key: str, a: Any, b: Any) -> bool:
    """Whether two stored scale values agree within what another device may compute (see ``projection``)."""
    if key == "scale" and isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5)
    if key == "scales" and isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(math.isclose(x, y, rel_tol=1e-2) for x, y in zip(a, b))
    return False


def load_checkpoint(run: RunDirectory) -> Checkpoint | None:
    """The last committed checkpoint of ``run``, or ``None`` if it has none yet."""
    path = run.path / CHECKPOINT
    if not path.is_file():
        return None
    doc = run.read_json(CHECKPOINT)
    where = str(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise RunDirectoryError(f"{where} has format {got!r}; this lmaas-tune reads format {FORMAT} (upgrade it)")
    try:
        name, digest = doc["optimizer"]["file"], doc["optimizer"]["sha256"]
        int(doc["generation"]), dict(doc["discarded"]), dict(doc["ledger"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirectoryError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
    if not isinstance(name, str) or not _STATE_FILE.fullmatch(name):
        raise RunDirectoryError(f"{where} names an optimiser file {name!r} outside the run directory's pattern")
    state_path = run.path / name
    if not state_path.is_file():
        raise RunDirectoryError(f"{state_path} is missing; the run directory is incomplete")
    blob = state_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != digest:
        raise RunDirectoryError(f"{state_path} does not match the SHA-256 that {CHECKPOINT} records; the file is corrupt")
    return Checkpoint(doc, blob, where)


def progress(path: str | Path) -> tuple[int, int, int] | None:
    """``(generation, calls, budget)`` of the last commit in run directory ``path``, if it has one."""
    try:
        doc = json.loads((Path(path) / CHECKPOINT).read_text("utf-8"))
        return int(doc["generation"]), int(doc["ledger"]["calls"]), int(doc["ledger"]["budget"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
