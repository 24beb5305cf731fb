"""Tuning settings and the named presets they start from.

Two families of presets compose: a *size* preset (:data:`PRESETS`: ``paper``, ``cpu``) sets how
big the run is (prompt length, budget); a *method* preset (:data:`METHOD_PRESETS`: ``bbt``,
``bbt-icml``, ``bbtv2``) sets the algorithm and its knobs (method, sigma0, alpha, projection
distribution, bounds, loss). :func:`tune_config` applies the size preset, then the method preset,
then explicit settings, which always win.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import ConfigError
from .losses import LOSSES
from .projection import DISTRIBUTIONS
from .registry import Registry


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
        from .methods import METHODS  # the methods build optimisers; import them only when configs are made

        object.__setattr__(self, "method", METHODS.canonical(self.method))
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


@dataclass(frozen=True)
class Preset:
    description: str
    config: TuneConfig


PRESETS: Registry[Preset] = Registry("preset")
PRESETS.add("paper", Preset("the paper's settings: L=50, d=500, popsize 20, sigma 1, 8000 calls, 16-shot", TuneConfig()))
# Chosen on the SST-2 dev split with the embedded model (README, "CPU preset"): a 10-token prompt and
# 400 calls finish in a few minutes on two CPU cores; everything else stays at the paper's values.
PRESETS.add(
    "cpu",
    Preset(
        "for the embedded model on a laptop CPU: L=10, 400 calls, otherwise the paper's settings",
        TuneConfig(prompt_length=10, budget=400),
    ),
)


@dataclass(frozen=True)
class MethodPreset:
    """A tuning method and its algorithm knobs; applied over a size preset, under explicit options."""

    description: str
    method: str
    sigma0: float
    alpha: float
    distribution: str
    bounds: tuple[float, float] | None
    loss: str

    def apply(self, config: TuneConfig) -> TuneConfig:
        return replace(config, method=self.method, sigma0=self.sigma0, alpha=self.alpha,
                       distribution=self.distribution, bounds=self.bounds, loss=self.loss)


METHOD_PRESETS: Registry[MethodPreset] = Registry("method preset")
METHOD_PRESETS.add("bbt", MethodPreset(
    "BBT with the paper's defaults: sigma 1, alpha 1, normal projection, no bounds, cross-entropy",
    "bbt", 1.0, 1.0, "normal", None, "ce"))
METHOD_PRESETS.add("bbt-icml", MethodPreset(
    "BBT as in the ICML paper's older preset: sigma 0.5, bounds [-5, 5], uniform projection, hinge loss",
    "bbt", 0.5, 1.0, "uniform", (-5.0, 5.0), "hinge"))
METHOD_PRESETS.add("bbtv2", MethodPreset(
    "deep BBT (BBTv2): a prompt at every layer, a CMA-ES per layer in turn; sigma 0.2, alpha 0.2 (per-layer "
    "scale from hidden-state std), normal projection, no bounds, cross-entropy",
    "bbtv2", 0.2, 0.2, "normal", None, "ce"), aliases=("deep-bbt",))


def tune_config(preset: str = "paper", method: str = "bbt", **overrides: Any) -> TuneConfig:
    """The size preset, then the method preset, then ``overrides`` (``None`` values are ignored)."""
    return METHOD_PRESETS.get(method).apply(PRESETS.get(preset).config).with_overrides(**overrides)
