"""Two-stage derivative-free optimisation, as BBT-RGB does: CMA-ES, then COBYLA from its best point.

**Stage 1** is :class:`~.cma_es.CMAES` for ``stage1_generations`` whole generations: the
``cma_fraction`` of the budget, rounded down to whole generations, and at least one. **Stage 2** is
COBYLA (:mod:`.cobyla`) for the calls left, started from the best candidate so far (CMA-ES's best)
with its loss, which is known, so it costs no call. COBYLA is sequential: in stage 2 every ``ask``
returns one candidate (a population of one), and each is told before the next is asked. So the
budget is spent exactly: stage 1 never has a partial generation, and stage 2 asks one call at a
time until the tuner's ledger is empty.

COBYLA's settings: ``rhobeg`` (its first trust-region radius; its first ``dim`` calls each move one
coordinate of the start point by that much) is the mean coordinate-wise standard deviation of
CMA-ES's search distribution at the switch (``sigma`` times the root of the covariance diagonal: the
step size CMA-ES had arrived at, per coordinate); ``rhoend`` is ``rhobeg * 1e-6``; ``maxfun`` is the
calls left, plus the free start point (at least ``dim + 2``, COBYLA's minimum). Should COBYLA stop
before the calls are spent (its trust region down to ``rhoend``), a new COBYLA run starts from the
best candidate so far with the same ``rhobeg``.

Non-finite losses: stage 1 as :class:`~.cma_es.CMAES`; in stage 2 a non-finite loss is logged and
handed to COBYLA, which treats it as a huge value (PRIMA's extreme barrier). With ``bounds`` the
stage-2 candidate is COBYLA's point clipped to the box (COBYLA minimises the loss of the clipped
point).

**Checkpoints** hold no pickle in stage 2. In stage 1 they are CMA-ES's (its JSON state and pickled
strategy). From the switch on, the JSON state holds stage 2's start point and its loss, ``rhobeg``
and ``rhoend``, the number of losses told and the SHA-256 of the points COBYLA asked for (float64,
in order), and the bytes are those losses (float64, in order). :meth:`restore` replays the losses
into a fresh COBYLA and refuses (:class:`RunDirectoryError`) unless it asks for exactly the same
points; COBYLA is deterministic, so it does on the same scipy and numpy. Replaying costs the
COBYLA steps (no model calls): about as long as COBYLA's own computation in the run so far.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmaas_tune.errors import ConfigError, RunDirectoryError
from .base import Optimizer
from .cma_es import CMAES
from .cobyla import CobylaRun

log = logging.getLogger("lmaas_tune")

#: ``rhoend`` relative to ``rhobeg``
RHOEND = 1e-6


def stage1_generations(budget: int, popsize: int, cma_fraction: float) -> int:
    """Stage 1's whole CMA-ES generations: ``cma_fraction`` of ``budget`` rounded down, at least one."""
    share = round(cma_fraction * budget, 6)  # 0.57 * 100 is 56.99999999999999 in floats
    return max(1, min(budget // popsize, int(share // popsize)))


def _scipy_version() -> str:
    import scipy

    return str(scipy.__version__)


class CMACobyla(Optimizer):
    """CMA-ES for the first part of ``budget``, then COBYLA (see the module docstring)."""

    def __init__(self, dim: int, *, popsize: int = 20, sigma0: float = 1.0, seed: int = 42,
                 bounds: Sequence[float] | None = None, budget: int, cma_fraction: float = 0.5) -> None:
        if not 0 < cma_fraction <= 1:
            raise ConfigError(f"--cma-fraction must be in (0, 1]; got {cma_fraction}")
        if budget < popsize:
            raise ConfigError(f"budget ({budget}) is smaller than popsize ({popsize}): not one generation fits")
        self.dim, self.popsize, self.budget, self.cma_fraction = dim, popsize, budget, cma_fraction
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.stage1_generations = stage1_generations(budget, popsize, cma_fraction)
        self.stage2_calls = budget - self.stage1_generations * popsize
        self.cma: CMAES | None = CMAES(dim, popsize=popsize, sigma0=sigma0, seed=seed, bounds=bounds)
        self.best_loss = math.inf
        self.best_z: np.ndarray | None = None
        # stage 2 (set at the switch)
        self.start: tuple[np.ndarray, float] | None = None
        self.rhobeg = self.rhoend = math.nan
        self.losses: list[float] = []  # every stage-2 loss told, in order
        self._digest = hashlib.sha256()  # of every stage-2 point told (COBYLA's, before clipping)
        self._run: CobylaRun | None = None
        self._runs = 0  # COBYLA runs started (more than one if COBYLA stopped early)

    @property
    def stage(self) -> int:
        return 1 if self.cma is not None else 2

    @property
    def generation(self) -> int:
        if self.cma is not None:
            return self.cma.generation
        return self.stage1_generations + len(self.losses)

    # -- ask / tell -----------------------------------------------------------------------------

    def ask(self) -> np.ndarray:
        if self.cma is not None:
            return self.cma.ask()
        return np.array(self._candidate(self._next_point()))[None, :]

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        if self.cma is not None:
            self.cma.tell(candidates, losses)
            if self.cma.best_z is not None and self.cma.best_loss < self.best_loss:
                self.best_loss, self.best_z = self.cma.best_loss, np.array(self.cma.best_z)
            if self.cma.generation >= self.stage1_generations:
                self._switch()
            return
        point = self._run.pending if self._run is not None else None
        cands, values = np.asarray(candidates, dtype=np.float64), np.asarray(losses, dtype=np.float64)
        if point is None or cands.shape != (1, self.dim) or values.shape != (1,):
            raise ValueError("in stage 2 each ask returns one candidate, told before the next ask with one loss")
        if not np.array_equal(cands[0], self._candidate(point)):
            raise ValueError("tell() got another candidate than the one ask() returned")
        self._told(point, float(values[0]))

    def center(self) -> np.ndarray | None:
        """CMA-ES's mean in stage 1; none in stage 2 (COBYLA's iterate is its best point)."""
        return self.cma.center() if self.cma is not None else None

    def _candidate(self, point: np.ndarray) -> np.ndarray:
        """What is scored for COBYLA's point: the point, clipped to the bounds if there are any."""
        return point if self.bounds is None else np.clip(point, *self.bounds)

    def _switch(self) -> None:
        """End stage 1: COBYLA will start from the best candidate, with CMA-ES's step size."""
        assert self.cma is not None and self.best_z is not None  # CMAES raises on a generation of no finite loss
        stds = np.asarray(self.cma.stds, dtype=np.float64)
        rhobeg = float(np.mean(stds))
        if not (math.isfinite(rhobeg) and rhobeg > 0):
            rhobeg = self.cma.sigma0
        self._begin_stage2((np.array(self.best_z), float(self.best_loss)), rhobeg, rhobeg * RHOEND)
        self.cma = None

    def _begin_stage2(self, start: tuple[np.ndarray, float], rhobeg: float, rhoend: float) -> None:
        self.close()
        self.start, self.rhobeg, self.rhoend = start, rhobeg, rhoend
        self.best_z, self.best_loss = np.array(start[0]), start[1]
        self.losses, self._digest, self._runs = [], hashlib.sha256(), 0

    def _next_point(self) -> np.ndarray:
        """COBYLA's next point; a new COBYLA run from the best candidate if the last one stopped."""
        fresh = False
        while True:
            if self._run is None:
                assert self.best_z is not None
                left = max(self.stage2_calls - len(self.losses), 1)
                self._run = CobylaRun(self.best_z, self.best_loss, rhobeg=self.rhobeg, rhoend=self.rhoend,
                                      maxfun=max(left + 1, self.dim + 2))
                self._runs += 1
                fresh = True
            point = self._run.next()
            if point is not None:
                return point
            self._run.close()
            self._run = None
            if fresh:  # cannot happen (a run asks at least once); never loop on it
                raise RuntimeError("COBYLA stopped without asking for a point")

    def _told(self, point: np.ndarray, loss: float, *, replay: bool = False) -> None:
        assert self._run is not None
        if not math.isfinite(loss) and not replay:
            log.warning("candidate %d of stage 2 (COBYLA) had a non-finite loss; COBYLA treats it as a huge value",
                        len(self.losses) + 1)
        self._run.answer(loss)
        self.losses.append(loss)
        self._digest.update(np.ascontiguousarray(point, dtype="<f8").tobytes())
        if loss < self.best_loss:  # False for NaN
            self.best_loss, self.best_z = loss, np.array(self._candidate(point))
        if len(self.losses) == self.stage2_calls:  # the planned budget is spent: end the thread now
            self.close()

    def close(self) -> None:
        """Stop stage 2's COBYLA thread, if one runs (a later ask starts a new COBYLA run)."""
        if self._run is not None:
            self._run.close()
            self._run = None

    # -- checkpoints ----------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {"optimizer": "cma-cobyla", "dim": self.dim, "popsize": self.popsize, "budget": self.budget,
                "stage1_generations": self.stage1_generations}

    def checkpoint(self) -> tuple[dict[str, Any], bytes]:
        state: dict[str, Any] = {
            **self._identity(), "stage": self.stage, "generation": self.generation,
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_z": None if self.best_z is None else self.best_z.tolist(),
        }
        if self.cma is not None:
            cma_state, blob = self.cma.checkpoint()
            return {**state, "cma": cma_state}, blob
        assert self.start is not None
        state["cobyla"] = {
            "start": self.start[0].tolist(), "start_loss": self.start[1], "rhobeg": self.rhobeg,
            "rhoend": self.rhoend, "told": len(self.losses), "points_sha256": self._digest.hexdigest(),
            "runs": self._runs, "scipy": _scipy_version(),
        }
        return state, np.asarray(self.losses, dtype="<f8").tobytes()

    def restore(self, state: dict[str, Any], blob: bytes, *, where: str = "the checkpoint") -> None:
        mine = self._identity()
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise RunDirectoryError(f"{where} holds the state of another optimiser {theirs}; expected {mine}")
        try:
            if state["stage"] == 1:
                if self.cma is None:
                    raise RunDirectoryError(f"{where}: restore a stage-1 checkpoint into a fresh optimiser")
                self.cma.restore(state["cma"], blob, where=where)
                self.best_loss = math.inf if state["best_loss"] is None else float(state["best_loss"])
                self.best_z = None if state["best_z"] is None else np.asarray(state["best_z"], dtype=np.float64)
            elif state["stage"] == 2:
                self._restore_stage2(state, blob, where)
            else:
                raise RunDirectoryError(f"{where}: unknown stage {state['stage']!r}")
            if self.generation != state["generation"]:
                raise RunDirectoryError(f"{where}: the optimiser state is at generation {self.generation}, "
                                        f"the checkpoint at {state['generation']}")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RunDirectoryError(f"{where}: the two-stage optimiser state is malformed "
                                    f"({type(exc).__name__}: {exc})") from None

    def _restore_stage2(self, state: dict[str, Any], blob: bytes, where: str) -> None:
        c = state["cobyla"]
        told = int(c["told"])
        if len(blob) != 8 * told:
            raise RunDirectoryError(f"{where}: the optimiser file holds {len(blob)} bytes, not {told} losses")
        start = (np.asarray(c["start"], dtype=np.float64), float(c["start_loss"]))
        if start[0].shape != (self.dim,):
            raise RunDirectoryError(f"{where}: stage 2's start point has shape {start[0].shape}, not ({self.dim},)")
        self.cma = None
        self._begin_stage2(start, float(c["rhobeg"]), float(c["rhoend"]))
        try:
            for loss in np.frombuffer(blob, dtype="<f8").tolist():  # replay: COBYLA asks again, bit for bit
                self._told(self._next_point(), loss, replay=True)
        except BaseException:
            self.close()
            raise
        best = None if state["best_z"] is None else np.asarray(state["best_z"], dtype=np.float64)
        same_best = best is not None and self.best_z is not None and np.array_equal(best, self.best_z)
        if self._digest.hexdigest() != c["points_sha256"] or not same_best:
            self.close()
            raise RunDirectoryError(
                f"{where}: replaying the {told} losses of stage 2 into COBYLA did not ask for the points the run "
                f"asked for (the run used scipy {c.get('scipy')}, this is scipy {_scipy_version()}); the checkpoint "
                f"was changed, or this scipy/numpy computes COBYLA's steps differently: resume it where it ran"
            )
