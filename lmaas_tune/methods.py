"""Tuning methods: what the fit loop searches, as a registry of named methods.

A method turns a tuning config and a backend into a :class:`SearchSpace`: an optimiser whose
candidates are flat vectors (the :class:`~lmaas_tune.optimizers.Optimizer` seam, which also owns
the optimiser's checkpoint) and the projection that maps a population of them to prompts. The fit
loop (:class:`~lmaas_tune.tuner.BlackBoxTuner`) is the same for every method: ask, project,
score, tell, dev check, checkpoint.

* ``bbt`` (Sun et al., ICML 2022): one CMA-ES over z in R^d; the prompt is ``A z + p0``
  (``[L, D]``), A scaled from the word-embedding std, p0 zeros or the embeddings of a text
  (``prompt_init``).
* ``bbtv2`` (deep BBT, Sun et al., EMNLP 2022): one CMA-ES and one projection per layer slot; the
  candidate is ``N * d`` numbers and its prompt the deep prompt ``[N, L, D]`` (layout:
  :mod:`lmaas_tune.backends.deep`). Divide and conquer (:mod:`.optimizers.layerwise`). Slot
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

from .backends.base import Backend, ScoringBatch
from .deep_projection import DeepProjection, DeepProjectionSpec, build_projection
from .errors import ConfigError
from .optimizers import CMAES, LayerwiseCMAES, Optimizer
from .projection import Projection, ProjectionSpec
from .registry import Registry

if TYPE_CHECKING:
    from .config import TuneConfig

AnySpec = ProjectionSpec | DeepProjectionSpec
AnyProjection = Projection | DeepProjection


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
        :class:`~lmaas_tune.config.TuneConfig` refuses it for the other methods)."""
        return None

    @abc.abstractmethod
    def space(self, config: "TuneConfig", spec: AnySpec, base: np.ndarray | None = None) -> SearchSpace:
        """A fresh optimiser and the projection ``spec`` describes, offset by the initial prompt ``base``."""


class ShallowBBT(Method):
    description = "BBT: one CMA-ES over z, prompt A z at the input embeddings"

    async def projection_spec(self, config: "TuneConfig", backend: Backend, train: ScoringBatch) -> AnySpec:
        info = backend.info
        return ProjectionSpec.for_model(
            seed=config.seed, prompt_length=config.prompt_length, hidden_size=info.hidden_size,
            intrinsic_dim=config.intrinsic_dim, embedding_std=info.embedding_std, alpha=config.alpha,
            sigma0=config.sigma0, distribution=config.distribution,
        )

    async def initial_prompt(self, config: "TuneConfig", backend: Backend) -> np.ndarray | None:
        if not config.prompt_init:
            return None
        return text_prompt(await backend.embed_text(config.prompt_init), config.prompt_length, config.prompt_init)

    def space(self, config: "TuneConfig", spec: AnySpec, base: np.ndarray | None = None) -> SearchSpace:
        if not isinstance(spec, ProjectionSpec):
            raise ConfigError("method bbt needs a plain projection; this run stores a deep one")
        opt = CMAES(config.intrinsic_dim, popsize=config.popsize, sigma0=config.sigma0, seed=config.seed,
                    bounds=config.bounds)
        return SearchSpace(opt, Projection(spec, base))


class DeepBBT(Method):
    description = "BBTv2: a CMA-ES and a projection per layer, prompts added to every layer's hidden states"

    async def projection_spec(self, config: "TuneConfig", backend: Backend, train: ScoringBatch) -> AnySpec:
        info = backend.info
        if not info.supports_deep_prompts:
            raise ConfigError(f"--method bbtv2 needs a backend that takes deep (per-layer) prompts; {info.model_id} "
                              f"on this backend does not (use the local backend or an lmaas-tune service)")
        std = await backend.hidden_state_std(train)
        if len(std) != info.num_layers:
            raise ConfigError(f"the backend measured {len(std)} layers; it reports {info.num_layers}")
        return DeepProjectionSpec.for_model(
            seed=config.seed, prompt_length=config.prompt_length, hidden_size=info.hidden_size,
            intrinsic_dim=config.intrinsic_dim, layer_std=std, alpha=config.alpha, sigma0=config.sigma0,
            distribution=config.distribution,
        )

    def space(self, config: "TuneConfig", spec: AnySpec, base: np.ndarray | None = None) -> SearchSpace:
        if not isinstance(spec, DeepProjectionSpec):
            raise ConfigError("method bbtv2 needs a deep projection; this run stores a plain one")
        opt = LayerwiseCMAES(spec.layers, config.intrinsic_dim, popsize=config.popsize, sigma0=config.sigma0,
                             seed=config.seed, bounds=config.bounds)
        return SearchSpace(opt, build_projection(spec, base))  # refuses a base: deep prompts start from zeros


def text_prompt(rows: np.ndarray, length: int, text: str = "") -> np.ndarray:
    """An initial prompt of ``length`` tokens from a text's token embeddings ``rows`` ``[T, D]``:
    the text repeated until it fills the prompt, then cut (a zero position is not a word: a prompt
    of zeros costs the embedded model 15 points of zero-shot SST-2 accuracy on a train-pool sample)."""
    if len(rows) == 0:
        raise ConfigError(f"--prompt-init {text!r} has no tokens; give a non-empty text or leave it out")
    reps = -(-length // len(rows))
    return np.ascontiguousarray(np.tile(np.asarray(rows, dtype=np.float32), (reps, 1))[:length])


METHODS: Registry[Method] = Registry("method")
METHODS.add("bbt", ShallowBBT())
METHODS.add("bbtv2", DeepBBT(), aliases=("deep-bbt", "deep"))
