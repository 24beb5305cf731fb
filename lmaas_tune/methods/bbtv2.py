"""``bbtv2`` (deep BBT, Sun et al., EMNLP 2022): a CMA-ES and a projection per layer slot.

The candidate is ``N * d`` numbers and its prompt the deep prompt ``[N, L, D]``, added to the
hidden states at the prompt positions before every layer. Divide and conquer
(:mod:`.optimizers.layerwise`): each round runs one generation per layer, the others frozen. Slot
``i``'s projection is scaled from the 3-sigma-clipped std of the hidden states it is added to,
measured once per run on the few-shot train batch with the manual template
(:meth:`Backend.hidden_state_std`; not a candidate, so not charged to the budget). Needs a backend
that accepts deep prompts (``BackendInfo.supports_deep_prompts``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmaas_tune.backends.base import Backend, ScoringBatch
from lmaas_tune.errors import ConfigError
from lmaas_tune.projection import AnySpec, DeepProjectionSpec, build_projection

import numpy as np

from .base import METHODS, Method, SearchSpace
from .optimizers import LayerwiseCMAES

if TYPE_CHECKING:
    from .config import TuneConfig


class DeepBBT(Method):
    description = "BBTv2: a CMA-ES and a projection per layer, prompts added to every layer's hidden states"

    async def projection_spec(self, config: "TuneConfig", backend: Backend, train: ScoringBatch) -> AnySpec:
        info = backend.info
        if not info.supports_deep_prompts:
            why = f" ({info.extra['no_deep_prompts']})" if "no_deep_prompts" in info.extra else ""
            raise ConfigError(f"--method bbtv2 needs a backend that takes deep (per-layer) prompts; {info.model_id} "
                              f"on this backend does not{why}: use --method bbt, or the local backend or an "
                              f"lmaas-tune service")
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



METHODS.add("bbtv2", DeepBBT(), aliases=("deep-bbt", "deep"))
