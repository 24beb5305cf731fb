"""Optimisers behind the ask/tell seam."""

from .base import Optimizer
from .cma_es import CMAES

__all__ = ["CMAES", "Optimizer"]
