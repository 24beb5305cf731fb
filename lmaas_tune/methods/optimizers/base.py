"""The Optimizer seam: ask for candidates, tell their losses.

Contract:

* ``ask()`` returns a fresh population ``[n, dim]``: ``n`` is ``popsize`` for a population method,
  and may be smaller (one for a sequential optimiser, such as COBYLA in :mod:`.two_stage`); each
  ``ask`` is followed by at most one ``tell`` with the same array and one loss per row, or by
  nothing (a run that ends mid-generation).
* Losses are "lower is better". Non-finite losses are the optimiser's explicit decision (documented
  by each implementation), never silently averaged away.
* ``best`` is the lowest-loss candidate ever told. Optimisers own their randomness: two instances
  with the same seed produce the same sequence whatever else runs in the process.
* ``center()`` is the point the search is centred on (CMA-ES's mean), a smoothed estimate of the
  optimum that the tuner may score on the dev split beside the best candidate; ``None`` (the
  default) when the optimiser has none apart from its best candidate.
* ``close()`` releases what the optimiser holds besides memory (a worker thread); an optimiser
  is not asked again after it. The default does nothing.
* ``checkpoint()`` captures everything that decides future asks (internal state *and* RNG state)
  as a JSON-ready dict plus opaque bytes; ``restore`` on a fresh instance built with the same
  settings makes it continue exactly as the checkpointed one would have (bit for bit).
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class Optimizer(abc.ABC):
    popsize: int
    dim: int

    @abc.abstractmethod
    def ask(self) -> np.ndarray:
        """The next population, ``[n, dim]`` (see the module docstring)."""

    @abc.abstractmethod
    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """Report the losses of the population last asked for."""

    @property
    @abc.abstractmethod
    def generation(self) -> int:
        """Generations told so far."""

    @abc.abstractmethod
    def checkpoint(self) -> tuple[dict[str, Any], bytes]:
        """The full state: a JSON-ready dict and opaque bytes (see the module docstring)."""

    @abc.abstractmethod
    def restore(self, state: dict[str, Any], blob: bytes, *, where: str = "the checkpoint") -> None:
        """Put back what :meth:`checkpoint` returned; ``where`` names the source in errors."""

    def center(self) -> np.ndarray | None:
        """The search distribution's centre, ``[dim]``, or ``None`` (see the module docstring)."""
        return None

    def close(self) -> None:
        """Release what the optimiser holds besides memory (see the module docstring)."""
