"""Optimisers behind the ask/tell seam."""

from .base import Optimizer
from .cma_es import CMAES
from .layerwise import LayerwiseCMAES

__all__ = ["CMAES", "LayerwiseCMAES", "Optimizer"]
