"""Named presets a tuning config starts from.

Two families compose: a *size* preset (:data:`PRESETS`: ``paper``, ``cpu``) sets how big the run
is (prompt length, budget); a *method* preset (:data:`METHOD_PRESETS`: ``bbt``, ``bbt-icml``,
``bbt-cobyla``, ``bbtv2``) sets the algorithm and its knobs (method, sigma0, alpha, projection
distribution, bounds, loss, optimizer). :func:`tune_config` applies the size preset, then the
method preset, then explicit settings, which always win.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lmaas_tune.registry import Registry

from .config import TuneConfig


@dataclass(frozen=True)
class Preset:
    description: str
    config: TuneConfig


PRESETS: Registry[Preset] = Registry("preset")
PRESETS.add("paper", Preset("the paper's settings: L=50, d=500, popsize 20, sigma 1, 8000 calls, 16-shot", TuneConfig()))
# Chosen on the SST-2 dev split with the embedded model (docs/method.md, "The CPU preset"): a 10-token prompt and
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
    optimizer: str = "cma-es"

    def apply(self, config: TuneConfig) -> TuneConfig:
        return replace(config, method=self.method, sigma0=self.sigma0, alpha=self.alpha,
                       distribution=self.distribution, bounds=self.bounds, loss=self.loss, optimizer=self.optimizer)


METHOD_PRESETS: Registry[MethodPreset] = Registry("method preset")
METHOD_PRESETS.add("bbt", MethodPreset(
    "BBT with the paper's defaults: sigma 1, alpha 1, normal projection, no bounds, cross-entropy",
    "bbt", 1.0, 1.0, "normal", None, "ce"))
METHOD_PRESETS.add("bbt-icml", MethodPreset(
    "BBT as in the ICML paper's older preset: sigma 0.5, bounds [-5, 5], uniform projection, hinge loss",
    "bbt", 0.5, 1.0, "uniform", (-5.0, 5.0), "hinge"))
METHOD_PRESETS.add("bbt-cobyla", MethodPreset(
    "BBT with a two-stage optimiser, as BBT-RGB: CMA-ES for --cma-fraction of the budget (default half), then "
    "COBYLA from its best point; otherwise bbt's knobs",
    "bbt", 1.0, 1.0, "normal", None, "ce", "cma-cobyla"), aliases=("bbt-two-stage",))
METHOD_PRESETS.add("bbtv2", MethodPreset(
    "deep BBT (BBTv2): a prompt at every layer, a CMA-ES per layer in turn; sigma 0.2, alpha 0.2 (per-layer "
    "scale from hidden-state std), normal projection, no bounds, cross-entropy",
    "bbtv2", 0.2, 0.2, "normal", None, "ce"), aliases=("deep-bbt",))


def tune_config(preset: str = "paper", method: str = "bbt", **overrides: Any) -> TuneConfig:
    """The size preset, then the method preset, then ``overrides`` (``None`` values are ignored)."""
    return METHOD_PRESETS.get(method).apply(PRESETS.get(preset).config).with_overrides(**overrides)
