"""The Optimizer seam: ask for candidates, tell their losses.

Contract:

* ``ask()`` returns a fresh population ``[popsize, dim]``; each ``ask`` is followed by at most one
  ``tell`` with the same array and one loss per row, or by nothing (a run that ends mid-generation).
* Losses are "lower is better". Non-finite losses are the optimiser's explicit decision (documented
  by each implementation), never silently averaged away.
* ``best`` is the lowest-loss candidate ever told. Optimisers own their randomness: two instances
  with the same seed produce the same sequence whatever else runs in the process.
"""

from __future__ import annotations

import abc

import numpy as np


class Optimizer(abc.ABC):
    popsize: int
    dim: int

    @abc.abstractmethod
    def ask(self) -> np.ndarray:
        """The next population, ``[popsize, dim]``."""

    @abc.abstractmethod
    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """Report the losses of the population last asked for."""

    @property
    @abc.abstractmethod
    def generation(self) -> int:
        """Generations told so far."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, object]:
        """Serialisable state (for checkpoints)."""
