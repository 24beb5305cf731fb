"""Tuning methods: what the fit loop searches, as a registry of named methods.

A method turns a tuning config and a backend into a :class:`SearchSpace`: an optimiser whose
candidates are flat vectors (the :class:`~lmaas_tune.methods.optimizers.Optimizer` seam, which also owns
the optimiser's checkpoint) and the projection that maps a population of them to prompts. The fit
loop (:class:`~lmaas_tune.tuning.tuner.BlackBoxTuner`) is the same for every method: ask, project,
score, tell, dev check, checkpoint.

* ``bbt`` (Sun et al., ICML 2022): one CMA-ES over z in R^d; the prompt is ``A z + p0``
  (``[L, D]``), A scaled from the word-embedding std, p0 zeros or the embeddings of a text
  (``prompt_init``).
* ``bbtv2`` (deep BBT, Sun et al., EMNLP 2022): one CMA-ES and one projection per layer slot; the
  candidate is ``N * d`` numbers and its prompt the deep prompt ``[N, L, D]`` (layout:
  :mod:`lmaas_tune.backends.local.deep`). Divide and conquer (:mod:`.optimizers.layerwise`). Slot
  ``i``'s projection is scaled from the 3-sigma-clipped std of the hidden states it is added to,
  measured once per run on the few-shot train batch with the manual template
  (:meth:`Backend.hidden_state_std`; not a candidate, so not charged to the budget). Needs a
  backend that accepts deep prompts (``BackendInfo.supports_deep_prompts``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lmaas_tune.backends.base import Backend, ScoringBatch
from lmaas_tune.projection import AnyProjection, AnySpec
from lmaas_tune.registry import Registry

from .optimizers import Optimizer

if TYPE_CHECKING:
    from .config import TuneConfig


@dataclass(frozen=True)
class SearchSpace:
    """An optimiser over flat candidates and the projection that makes them prompts."""

    optimizer: Optimizer
    projection: AnyProjection


class Method(abc.ABC):
    """How one tuning method builds its search space (see the module docstring)."""

    description: str = ""

    @abc.abstractmethod
    async def projection_spec(self, config: "TuneConfig", backend: Backend, train: ScoringBatch) -> AnySpec:
        """The projection for this model (may score ``train`` once, uncharged, to measure the model)."""

    async def initial_prompt(self, config: "TuneConfig", backend: Backend) -> np.ndarray | None:
        """p0 of ``p = A z + p0`` (``None``: zeros). Only shallow BBT takes one (``--prompt-init``;
        :class:`~lmaas_tune.methods.config.TuneConfig` refuses it for the other methods)."""
        return None

    @abc.abstractmethod
    def space(self, config: "TuneConfig", spec: AnySpec, base: np.ndarray | None = None) -> SearchSpace:
        """A fresh optimiser and the projection ``spec`` describes, offset by the initial prompt ``base``."""



#: every tuning method by name; :mod:`.bbt` and :mod:`.bbtv2` register theirs on import
METHODS: Registry[Method] = Registry("method")
