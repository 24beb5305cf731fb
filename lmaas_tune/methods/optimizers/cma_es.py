"""CMA-ES (pycma) behind the Optimizer seam."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from lmaas_tune.errors import ConfigError, NonFiniteLossError, RunDirectoryError
from .base import Optimizer
from .cma_state import dump_strategy, load_strategy

log = logging.getLogger("lmaas_tune")


@contextmanager
def _own_global_rng(state: dict[str, Any]) -> Iterator[None]:
    """pycma samples from numpy's *global* RNG: swap ours in and out so runs cannot interfere."""
    outside = np.random.get_state()
    np.random.set_state(state["rng"])
    try:
        yield
    finally:
        state["rng"] = np.random.get_state()
        np.random.set_state(outside)


class CMAES(Optimizer):
    """pycma's ``CMAEvolutionStrategy`` from z0 = 0 with step size ``sigma0``.

    Non-finite losses: such a candidate is ranked last (given the worst finite loss of its
    generation plus one) rather than pycma's silent median, with a warning; if no loss of a
    generation is finite, :class:`NonFiniteLossError` is raised.

    Checkpoints: :meth:`checkpoint` returns a JSON-ready dict (the RNG state, the best candidate)
    and the pickled pycma strategy (see :mod:`.cma_state` for how those bytes are kept safe);
    :meth:`restore` puts both back, after which ``ask`` returns exactly what it would have
    returned in the process that wrote the checkpoint.
    """

    def __init__(
        self,
        dim: int,
        *,
        popsize: int = 20,
        sigma0: float = 1.0,
        seed: int = 42,
        bounds: Sequence[float] | None = None,
    ) -> None:
        with warnings.catch_warnings():  # pycma warns when matplotlib (its plotting) is absent
            warnings.simplefilter("ignore")
            import cma

        if popsize < 2:
            raise ConfigError(f"popsize must be at least 2; got {popsize}")
        if sigma0 <= 0:
            raise ConfigError(f"sigma must be positive; got {sigma0}")
        self.dim, self.popsize, self.sigma0, self.seed = dim, popsize, sigma0, seed
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        # pycma treats seed 0 as "use the clock"; map it to a fixed value to stay reproducible.
        cma_seed = seed if seed > 0 else 2**31 - 1 + seed
        opts: dict[str, Any] = {"popsize": popsize, "seed": cma_seed, "verbose": -9, "verb_disp": 0,
                                "verb_log": 0, "tolflatfitness": 10**9, "tolfun": 0, "tolx": 0}
        if bounds is not None:
            opts["bounds"] = [float(bounds[0]), float(bounds[1])]
        self._rng: dict[str, Any] = {"rng": np.random.RandomState(cma_seed).get_state()}
        with _own_global_rng(self._rng), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._es = cma.CMAEvolutionStrategy(dim * [0.0], sigma0, inopts=opts)
        self.best_loss = float("inf")
        self.best_z: np.ndarray | None = None

    @property
    def generation(self) -> int:
        return int(self._es.countiter)

    def ask(self) -> np.ndarray:
        with _own_global_rng(self._rng):
            return np.asarray(self._es.ask(), dtype=np.float64)

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        losses = np.asarray(losses, dtype=np.float64)
        finite = np.isfinite(losses)
        if not finite.any():
            raise NonFiniteLossError(
                f"every candidate of generation {self.generation + 1} had a non-finite loss; the model "
                f"output is broken (try float32, a smaller sigma, or a different loss)"
            )
        if not finite.all():
            log.warning("%d of %d candidates of generation %d had a non-finite loss; ranked last",
                        int((~finite).sum()), len(losses), self.generation + 1)
            losses = np.where(finite, losses, losses[finite].max() + 1.0)
        i = int(np.argmin(losses))
        if losses[i] < self.best_loss:
            self.best_loss, self.best_z = float(losses[i]), np.array(candidates[i])
        with _own_global_rng(self._rng), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._es.tell(list(candidates), losses.tolist())

    def center(self) -> np.ndarray:
        """CMA-ES's mean (clipped to the bounds, as candidates are)."""
        mean = np.array(self._es.mean, dtype=np.float64)
        return mean if self.bounds is None else np.clip(mean, *self.bounds)

    @property
    def sigma(self) -> float:
        return float(self._es.sigma)

    @property
    def stds(self) -> np.ndarray:
        """The coordinate-wise standard deviations of the search distribution (sigma times the
        root of the covariance diagonal)."""
        return np.asarray(self._es.stds, dtype=np.float64)

    def checkpoint(self) -> tuple[dict[str, Any], bytes]:
        kind, keys, pos, has_gauss, gauss = self._rng["rng"]
        state = {
            "optimizer": "cma-es", "dim": self.dim, "popsize": self.popsize, "generation": self.generation,
            "rng": {"kind": kind, "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                    "cached_gaussian": float(gauss)},
            "best_loss": self.best_loss if np.isfinite(self.best_loss) else None,
            "best_z": None if self.best_z is None else self.best_z.tolist(),
        }
        return state, dump_strategy(self._es)

    def restore(self, state: dict[str, Any], blob: bytes, *, where: str = "the checkpoint") -> None:
        if (state.get("optimizer"), state.get("dim"), state.get("popsize")) != ("cma-es", self.dim, self.popsize):
            raise RunDirectoryError(
                f"{where} holds the state of another optimiser ({state.get('optimizer')}, dim {state.get('dim')}, "
                f"popsize {state.get('popsize')}); expected cma-es, dim {self.dim}, popsize {self.popsize}"
            )
        es = load_strategy(blob, where)
        if int(es.countiter) != state.get("generation"):
            raise RunDirectoryError(f"{where}: the optimiser file is at generation {es.countiter}, "
                                    f"the checkpoint at {state.get('generation')}")
        r = state["rng"]
        self._rng = {"rng": (r["kind"], np.asarray(r["keys"], dtype=np.uint32), r["pos"], r["has_gauss"],
                             r["cached_gaussian"])}
        self._es = es
        self.best_loss = float("inf") if state["best_loss"] is None else float(state["best_loss"])
        self.best_z = None if state["best_z"] is None else np.asarray(state["best_z"], dtype=np.float64)
