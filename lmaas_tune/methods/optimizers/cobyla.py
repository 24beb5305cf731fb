"""COBYLA (scipy's) in ask/tell form.

``scipy.optimize.minimize(method="COBYLA")`` calls the objective itself, and scipy (1.16 and later
run PRIMA's pure-Python COBYLA) offers no reverse-communication interface. So one COBYLA run lives
in a worker thread whose objective hands each point it wants out on a queue and blocks until its
loss comes back: :meth:`CobylaRun.next` returns the next point (waiting while COBYLA computes it),
:meth:`CobylaRun.answer` gives its loss. COBYLA is deterministic: the same start, settings and
losses give the same points, bit for bit, which is how a checkpoint brings a run back (by replaying
its losses, see :mod:`.two_stage`); nothing of scipy is ever pickled.

The start point's loss is known (the caller scored it already), so the objective answers it from
memory instead of handing it out: a run of ``maxfun`` evaluations asks for ``maxfun - 1`` points.

Threads: the worker is a daemon thread that holds the two queues and nothing else of ours.
:meth:`CobylaRun.close` sends it a stop, which ends it at its next wait (at most one COBYLA step
later), and joins it; a run that is dropped without ``close`` is stopped the same way when it is
garbage-collected (a ``weakref.finalize`` that holds only the queue). A run whose COBYLA returns
ends its thread by itself.
"""

from __future__ import annotations

import importlib
import queue
import threading
import weakref
from typing import Any

import numpy as np


class _Stop(BaseException):
    """Raised inside the objective to unwind scipy when the run is closed (a BaseException, so
    nothing on the way catches it)."""


_STOP = object()


def _work(x0: np.ndarray, f0: float, options: dict[str, Any], asks: "queue.Queue[tuple[str, Any]]",
          answers: "queue.Queue[object]") -> None:
    """The worker thread: one COBYLA run; every point but the start goes out on ``asks``."""
    from scipy.optimize import minimize

    def objective(x: np.ndarray) -> float:
        if np.array_equal(x, x0):
            return f0
        asks.put(("ask", np.array(x, dtype=np.float64)))
        reply = answers.get()
        if reply is _STOP:
            raise _Stop
        assert isinstance(reply, float)
        return reply

    try:
        minimize(objective, x0, method="COBYLA", options=options)
    except _Stop:
        return
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's next()
        asks.put(("error", exc))
        return
    asks.put(("done", None))


class CobylaRun:
    """One COBYLA run from ``x0`` (whose loss ``f0`` is known) of at most ``maxfun`` evaluations.

    ``rhobeg`` is COBYLA's first trust-region radius (its first steps move one coordinate by that
    much), ``rhoend`` the radius at which it stops. ``maxfun`` must be at least ``len(x0) + 2``
    (COBYLA's own minimum; scipy would raise it with a warning).
    """

    def __init__(self, x0: np.ndarray, f0: float, *, rhobeg: float, rhoend: float, maxfun: int) -> None:
        importlib.import_module("scipy.optimize")  # a missing scipy fails here, not in the thread

        x0 = np.array(x0, dtype=np.float64)
        if maxfun < len(x0) + 2:
            raise ValueError(f"COBYLA needs maxfun >= dim + 2 = {len(x0) + 2}; got {maxfun}")
        if not 0 < rhoend <= rhobeg:
            raise ValueError(f"COBYLA needs 0 < rhoend <= rhobeg; got {rhoend}, {rhobeg}")
        options = {"rhobeg": float(rhobeg), "tol": float(rhoend), "maxiter": int(maxfun), "disp": 0}
        self._asks: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._answers: queue.Queue[object] = queue.Queue()
        self._pending: np.ndarray | None = None
        self.finished = False
        self._thread = threading.Thread(target=_work, args=(x0, float(f0), options, self._asks, self._answers),
                                        name="lmaas-tune-cobyla", daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, self._answers.put, _STOP)

    def next(self) -> np.ndarray | None:
        """The point COBYLA wants evaluated next (the same one again until it is answered), or
        ``None`` once COBYLA has stopped (``maxfun`` reached, or the trust region down to ``rhoend``)."""
        if self._pending is not None:
            return self._pending
        if self.finished:
            return None
        kind, value = self._asks.get()
        if kind == "ask":
            self._pending = value
            return value
        self.finished = True
        self._thread.join()
        self._finalizer.detach()
        if kind == "error":
            raise value
        return None

    @property
    def pending(self) -> np.ndarray | None:
        """The point :meth:`next` returned and no loss has answered yet."""
        return self._pending

    def answer(self, loss: float) -> None:
        """The loss of the point :meth:`next` returned."""
        if self._pending is None:
            raise RuntimeError("answer() without a point asked for (call next() first)")
        self._pending = None
        self._answers.put(float(loss))

    def close(self) -> None:
        """Stop the run (if it still runs) and wait for its thread to end."""
        self.finished = True
        self._pending = None
        if self._thread.is_alive():
            self._answers.put(_STOP)
            if self._thread is not threading.current_thread():
                self._thread.join()
        self._finalizer.detach()

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs (for tests)."""
        return self._thread.is_alive()
