"""The tuning settings of one run (:class:`TuneConfig`), validated against the registries."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from lmaas_tune.errors import ConfigError
from lmaas_tune.projection import DISTRIBUTIONS

from .base import METHODS
from .losses import LOSSES
from .optimizers import OPTIMIZERS


#: what a dev check may score (:attr:`TuneConfig.dev_candidates`)
DEV_CANDIDATES = ("best", "best+mean")


@dataclass(frozen=True)
class TuneConfig:
    """Black-Box Tuning knobs. Defaults are the paper's (DESIGN §1)."""

    prompt_length: int = 50
    intrinsic_dim: int = 500
    popsize: int = 20
    sigma0: float = 1.0
    alpha: float = 1.0
    distribution: str = "normal"
    bounds: tuple[float, float] | None = None
    budget: int = 8000
    loss: str = "ce"
    k_shot: int = 16
    eval_every: int = 100
    seed: int = 42
    #: inputs longer than the model limit: "drop" them (and count them) or stop with an "error"
    on_long: str = "drop"
    #: what is searched (:data:`lmaas_tune.methods.METHODS`): "bbt" or "bbtv2" (deep, per layer)
    method: str = "bbt"
    #: the initial prompt p0 in p = A z + p0: "" for zeros (the paper's), or a text whose token
    #: embeddings, repeated to L tokens, start the search from real words
    prompt_init: str = ""
    #: how z is searched (:data:`lmaas_tune.methods.optimizers.OPTIMIZERS`): "cma-es" (the paper's) or
    #: "cma-cobyla" (CMA-ES, then COBYLA from its best point; method bbt only)
    optimizer: str = "cma-es"
    #: cma-cobyla: the share of the budget CMA-ES gets (rounded down to whole generations, at least one)
    cma_fraction: float = 0.5
    #: what a dev check scores: "best" (the paper's: the lowest-train-loss candidate since the last
    #: check) or "best+mean" (also the optimiser's centre, CMA-ES's mean; the better on dev is kept)
    dev_candidates: str = "best"

    def __post_init__(self) -> None:
        if self.popsize < 2:
            raise ConfigError(f"--popsize must be at least 2 (CMA-ES needs to rank candidates); got {self.popsize}")
        if self.budget < self.popsize:
            raise ConfigError(
                f"--budget ({self.budget}) is smaller than --popsize ({self.popsize}): not one generation "
                f"fits; raise the budget or lower the popsize"
            )
        for name in ("prompt_length", "intrinsic_dim", "k_shot", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if not 0 < self.sigma0 < math.inf or not 0 < self.alpha < math.inf:
            raise ConfigError(f"--sigma and --alpha must be positive finite numbers; got {self.sigma0}, {self.alpha}")
        if self.on_long not in ("drop", "error"):
            raise ConfigError(f"--on-long must be drop or error; got {self.on_long!r}")
        if self.bounds is not None:
            lo, hi = self.bounds
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"bounds must satisfy low < high; got {self.bounds}")
            object.__setattr__(self, "bounds", (float(lo), float(hi)))
        LOSSES.get(self.loss)
        DISTRIBUTIONS.get(self.distribution)
        object.__setattr__(self, "method", METHODS.canonical(self.method))
        object.__setattr__(self, "optimizer", OPTIMIZERS.canonical(self.optimizer))
        if not 0 < self.cma_fraction <= 1:
            raise ConfigError(f"--cma-fraction must be more than 0 and at most 1; got {self.cma_fraction}")
        if self.dev_candidates not in DEV_CANDIDATES:
            raise ConfigError(f"--dev-candidates must be one of {', '.join(DEV_CANDIDATES)}; got {self.dev_candidates!r}")
        if self.optimizer != "cma-es" and self.method != "bbt":
            raise ConfigError(f"--optimizer {self.optimizer} is for --method bbt; {self.method} runs a CMA-ES per "
                              f"layer (leave --optimizer out)")
        if self.prompt_init and self.method != "bbt":
            raise ConfigError(f"--prompt-init is for --method bbt; {self.method} starts from zeros "
                              f"(leave --prompt-init out)")

    def with_overrides(self, **overrides: Any) -> "TuneConfig":
        """Replace the fields given (``None`` values are ignored)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bounds"] = list(self.bounds) if self.bounds else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TuneConfig":
        d = dict(data)
        if d.get("bounds") is not None:
            d["bounds"] = tuple(d["bounds"])
        return cls(**d)
