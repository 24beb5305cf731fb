"""Tuning methods: what the fit loop searches, and the settings and presets that configure it.

A method (:class:`Method`, registered by name in :data:`METHODS`) turns a tuning config and a
backend into a :class:`SearchSpace`: an optimiser whose candidates are flat vectors (the
:class:`~lmaas_tune.methods.optimizers.Optimizer` seam, which also owns the optimiser's checkpoint)
and the projection that maps a population of them to prompts. The fit loop
(:class:`~lmaas_tune.tuning.tuner.BlackBoxTuner`) is the same for every method: ask, project,
score, tell, dev check, checkpoint.

Add a method: a module here with a :class:`Method` subclass that registers itself in
:data:`METHODS`, imported below, and a :class:`~.presets.MethodPreset` for its knobs.
"""

from .base import METHODS, Method, SearchSpace
from .bbt import ShallowBBT, text_prompt  # importing a method's module registers it in METHODS
from .bbtv2 import DeepBBT
from .config import TuneConfig
from .losses import LOSSES
from .presets import METHOD_PRESETS, PRESETS, MethodPreset, Preset, tune_config

__all__ = [
    "LOSSES", "METHODS", "METHOD_PRESETS", "PRESETS", "DeepBBT", "Method", "MethodPreset", "Preset", "SearchSpace",
    "ShallowBBT", "TuneConfig", "text_prompt", "tune_config",
]
