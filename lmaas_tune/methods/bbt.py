"""``bbt`` (Sun et al., ICML 2022): one CMA-ES over z in R^d; the prompt is ``A z + p0`` (``[L, D]``).

The optimiser over z is CMA-ES (the paper's) or, with ``optimizer="cma-cobyla"``, CMA-ES and then
COBYLA from its best point (BBT-RGB's two-stage optimiser, :mod:`.optimizers.two_stage`).

A is scaled from the model's word-embedding std; p0 is zeros (the paper's) or the embeddings of a
text (``prompt_init``), repeated to L tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lmaas_tune.backends.base import Backend, ScoringBatch
from lmaas_tune.errors import ConfigError
from lmaas_tune.projection import AnySpec, Projection, ProjectionSpec

from .base import METHODS, Method, SearchSpace
from .optimizers import CMAES, CMACobyla, Optimizer

if TYPE_CHECKING:
    from .config import TuneConfig


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
        return SearchSpace(shallow_optimizer(config), Projection(spec, base))


def shallow_optimizer(config: "TuneConfig") -> Optimizer:
    """The optimiser over z that ``config.optimizer`` names (:data:`~.optimizers.OPTIMIZERS`)."""
    common: dict[str, Any] = {"popsize": config.popsize, "sigma0": config.sigma0, "seed": config.seed,
                              "bounds": config.bounds}
    if config.optimizer == "cma-cobyla":
        return CMACobyla(config.intrinsic_dim, budget=config.budget, cma_fraction=config.cma_fraction, **common)
    return CMAES(config.intrinsic_dim, **common)


def text_prompt(rows: np.ndarray, length: int, text: str = "") -> np.ndarray:
    """An initial prompt of ``length`` tokens from a text's token embeddings ``rows`` ``[T, D]``:
    the text repeated until it fills the prompt, then cut (a zero position is not a word: a prompt
    of zeros costs the embedded model 15 points of zero-shot SST-2 accuracy on a train-pool sample)."""
    if len(rows) == 0:
        raise ConfigError(f"--prompt-init {text!r} has no tokens; give a non-empty text or leave it out")
    reps = -(-length // len(rows))
    return np.ascontiguousarray(np.tile(np.asarray(rows, dtype=np.float32), (reps, 1))[:length])



METHODS.add("bbt", ShallowBBT())
