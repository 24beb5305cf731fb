"""BBTv2's divide and conquer: one CMA-ES per layer slot, over flat candidates of all slots.

Candidates are flat vectors of ``layers * dim`` numbers (slot ``i`` owns ``[i*dim, (i+1)*dim)``).
Generation ``g`` belongs to slot ``g mod layers``: its CMA-ES proposes that block, every other
block is frozen at the best candidate told so far (zeros before the first). A *round* is
``layers`` generations, one per slot in order. Each generation is one ask/tell, so the tuner's
loop, budget ledger and checkpoints work unchanged; a budget that is not a multiple of the
popsize ends with a partial generation that is not told, as for BBT.

Non-finite losses are handled by the slot's :class:`~.cma_es.CMAES` (ranked last; all of them
non-finite raises :class:`~lmaas_tune.errors.NonFiniteLossError`).

Checkpoints: the JSON state holds the turn, the best candidate and every slot's JSON state; the
bytes are the slots' pickled pycma strategies back to back (their sizes are in the JSON state).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmaas_tune.errors import RunDirectoryError
from .base import Optimizer
from .cma_es import CMAES


def member_seed(seed: int, layer: int) -> int:
    """Slot ``layer``'s CMA-ES seed: distinct per slot, and not another run seed's slot (mod 2**31 - 1)."""
    return (seed * 1_000_003 + layer * 7919 + 1) % (2**31 - 1)


class LayerwiseCMAES(Optimizer):
    """``layers`` CMA-ES instances of dimension ``dim``, asked in turn (see the module docstring)."""

    def __init__(self, layers: int, dim: int, *, popsize: int = 20, sigma0: float = 1.0, seed: int = 42,
                 bounds: tuple[float, float] | None = None) -> None:
        self.layers, self.block, self.popsize = layers, dim, popsize
        self.dim = layers * dim
        self.members = [CMAES(dim, popsize=popsize, sigma0=sigma0, seed=member_seed(seed, i), bounds=bounds)
                        for i in range(layers)]
        self.turn = 0  #: generations told so far; the next ask belongs to slot ``turn % layers``
        self.best_loss = float("inf")
        self.best_z = np.zeros(self.dim, dtype=np.float64)

    @property
    def generation(self) -> int:
        return self.turn

    @property
    def active(self) -> int:
        """The slot the next generation searches."""
        return self.turn % self.layers

    def _span(self, layer: int) -> slice:
        return slice(layer * self.block, (layer + 1) * self.block)

    def ask(self) -> np.ndarray:
        proposals = self.members[self.active].ask()
        full = np.tile(self.best_z, (len(proposals), 1))
        full[:, self._span(self.active)] = proposals
        return full

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        layer = self.active
        cands = np.asarray(candidates, dtype=np.float64)
        self.members[layer].tell(cands[:, self._span(layer)], losses)
        finite = np.where(np.isfinite(losses), losses, np.inf)
        i = int(np.argmin(finite))
        if finite[i] < self.best_loss:
            self.best_loss, self.best_z = float(finite[i]), np.array(cands[i])
        self.turn += 1

    def checkpoint(self) -> tuple[dict[str, Any], bytes]:
        parts = [member.checkpoint() for member in self.members]
        states, blobs = [p[0] for p in parts], [p[1] for p in parts]
        state = {"optimizer": "layerwise-cma-es", "layers": self.layers, "dim": self.block, "popsize": self.popsize,
                 "generation": self.turn, "best_loss": self.best_loss if np.isfinite(self.best_loss) else None,
                 "best_z": self.best_z.tolist(), "members": states, "sizes": [len(b) for b in blobs]}
        return state, b"".join(blobs)

    def restore(self, state: dict[str, Any], blob: bytes, *, where: str = "the checkpoint") -> None:
        mine = ("layerwise-cma-es", self.layers, self.block, self.popsize)
        theirs = (state.get("optimizer"), state.get("layers"), state.get("dim"), state.get("popsize"))
        if theirs != mine:
            raise RunDirectoryError(f"{where} holds the state of another optimiser {theirs}; expected {mine}")
        sizes = [int(s) for s in state["sizes"]]
        if sum(sizes) != len(blob) or len(sizes) != self.layers:
            raise RunDirectoryError(f"{where}: the optimiser file does not hold {self.layers} CMA-ES states")
        offset = 0
        for member, member_state, size in zip(self.members, state["members"], sizes):
            member.restore(member_state, blob[offset:offset + size], where=where)
            offset += size
        self.turn = int(state["generation"])
        self.best_loss = float("inf") if state["best_loss"] is None else float(state["best_loss"])
        self.best_z = np.asarray(state["best_z"], dtype=np.float64)
