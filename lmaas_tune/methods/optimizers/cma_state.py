"""Saving and restoring pycma's ``CMAEvolutionStrategy`` for checkpoints.

pycma has no serialisation of its own, so the strategy object is pickled. Pickle can run code
when read, so these bytes are only ever read from the run directory the user names
(``lmaas-tune fit --resume DIR``), only after their SHA-256 matches the one that directory's
``checkpoint.json`` records, and only through :class:`_StateUnpickler`, which resolves nothing but
pycma's own classes and functions, a short list of numpy reconstructors and plain builtin
containers. That protects against
corruption and accidents, not against someone who can write to the run directory: do not resume
run directories from sources you do not trust.

pycma draws its samples from numpy's *global* RNG through a bound method (``np.random.randn``)
kept in its options and sampler. Pickled naively, that method would take a frozen copy of the
global ``RandomState`` along; here the global RNG is pickled by reference (a persistent id), so a
restored strategy draws from the live global RNG again, which :class:`~.cma_es.CMAES` swaps for
its own saved state around every call.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from lmaas_tune.errors import RunDirectoryError

_GLOBAL_RNG = "numpy-global-random-state"
_BUILTINS = {"range", "slice", "complex", "set", "frozenset", "bytearray", "list", "dict", "tuple", "object"}
_NUMPY = {
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy.random._pickle", "__randomstate_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._mt19937", "MT19937"), ("numpy.linalg", "eigh"),
}


def _global_rng() -> np.random.RandomState:
    return np.random.mtrand._rand  # the RandomState behind np.random.randn & co.


def _public_getattr(obj: Any, name: str) -> Any:
    """``getattr`` for rebuilding bound methods (``rng.randn``); private and dunder names are refused."""
    if not isinstance(name, str) or name.startswith("_"):
        raise pickle.UnpicklingError(f"refusing attribute {name!r}")
    return getattr(obj, name)


class _StatePickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> str | None:
        return _GLOBAL_RNG if obj is _global_rng() else None


class _StateUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if pid != _GLOBAL_RNG:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return _global_rng()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return _public_getattr
        if (module == "builtins" and name in _BUILTINS) or (module, name) in _NUMPY:
            return super().find_class(module, name)
        if module == "cma" or module.startswith("cma."):
            obj = super().find_class(module, name)
            if callable(obj) and str(getattr(obj, "__module__", "")).startswith("cma"):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a pycma state")


def dump_strategy(es: Any) -> bytes:
    buf = io.BytesIO()
    _StatePickler(buf, protocol=4).dump(es)
    return buf.getvalue()


def load_strategy(blob: bytes, where: str) -> Any:
    """The strategy pickled by :func:`dump_strategy`; ``where`` names the file in errors."""
    try:
        es = _StateUnpickler(io.BytesIO(blob)).load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise RunDirectoryError(f"{where} does not hold a CMA-ES state ({type(exc).__name__}: {exc})") from None
    if type(es).__name__ != "CMAEvolutionStrategy" or not type(es).__module__.startswith("cma"):
        raise RunDirectoryError(f"{where} does not hold a CMA-ES state (found {type(es).__name__})")
    return es


