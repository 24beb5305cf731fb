"""Optimisers behind the ask/tell seam, and the registry of the names a tuning config chooses from."""

from lmaas_tune.registry import Registry

from .base import Optimizer
from .cma_es import CMAES
from .layerwise import LayerwiseCMAES
from .two_stage import CMACobyla

#: the optimisers ``TuneConfig.optimizer`` (``--optimizer``) names, with what each does; the method
#: builds the optimiser (:mod:`lmaas_tune.methods.bbt`)
OPTIMIZERS: Registry[str] = Registry("optimizer")
OPTIMIZERS.add("cma-es", "CMA-ES for the whole budget (the paper's)", aliases=("cma",))
OPTIMIZERS.add("cma-cobyla", "CMA-ES for --cma-fraction of the budget, then COBYLA (scipy) from its best point for "
               "the rest, one call at a time (BBT-RGB's two-stage optimiser; --method bbt only)",
               aliases=("two-stage",))

__all__ = ["CMACobyla", "CMAES", "LayerwiseCMAES", "OPTIMIZERS", "Optimizer"]
