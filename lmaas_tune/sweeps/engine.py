"""Ray as the engine: one Ray task per trial, at most ``max_concurrent`` in flight.

Each task runs :func:`.worker.run_trial` on the trial's run directory. A worker that dies (SIGKILL,
out of memory, a lost node) is a system failure: Ray runs the task again, up to ``max_retries``
times, and the trial continues from its checkpoint. A fit that fails (bad data) is not retried:
the task returns the one-line error. Ray keeps no state of its own that matters: the sweep
directory is all a resume reads.

Ray is imported here only, when a sweep runs (``pip install 'lmaas-tune[ray]'``). Without an
``address`` and with no Ray connection open in this process, a local Ray starts in-process on
this machine's cores and stops when the sweep ends; ``address`` (``auto``, ``HOST:PORT`` or
``ray://HOST:PORT``) joins a running cluster, whose every node must see the sweep directory at the
same path (a shared file system) and have lmaas-tune installed. Tasks are spread over the nodes.
"""

from __future__ import annotations

import importlib
import logging
import signal
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmaas_tune.errors import ConfigError, MissingExtraError

from .directory import SweepDirectory
from .trials import TrialSpec
from .progress import SweepProgress, best_dev, running
from .worker import one_line, run_trial


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs {module}, which is not installed; install the {extra} extra: "
                                f"pip install 'lmaas-tune[{extra}]'") from None


@dataclass(frozen=True)
class EngineOptions:
    """Where and how wide the trials run."""

    address: str | None = None  # None: a local Ray in this process (or the one this process already joined)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # None: as many as the cluster's resources allow
    max_retries: int = 3  # runs of a trial again after its worker died

    def __post_init__(self) -> None:
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError(f"--cpus-per-trial must be positive and --gpus-per-trial not negative; got "
                              f"{self.cpus_per_trial} and {self.gpus_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent must be at least 1; got {self.max_concurrent}")
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries must be 0 or more; got {self.max_retries}")


TrialEnd = Callable[[TrialSpec, Mapping[str, Any]], object]


def check_address(address: str | None, timeout_s: float = 10.0) -> None:
    """Refuse at once a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing listens: Ray itself
    keeps retrying for minutes. ``auto`` and no address are left to Ray."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise ConfigError(f"--address {address} is not HOST:PORT, ray://HOST:PORT or auto") from None
    except OSError as exc:
        raise ConfigError(f"could not join the Ray cluster at {address} (nothing answers there: "
                          f"{exc.strerror or exc}); start the cluster with `ray start --head`, or drop --address to "
                          f"run on this machine") from None


def _connect(ray: Any, address: str | None) -> bool:
    """Join or start Ray; True when this call started it (and so must stop it)."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ConfigError(f"could not start or join {where} ({one_line(exc)}); start the cluster with `ray start "
                          f"--head`, or drop --address to run on this machine") from None
    return True


def run_trials(directory: SweepDirectory, trials: Sequence[TrialSpec], options: EngineOptions, *,
               on_progress: Callable[[SweepProgress], None] | None = None,
               on_trial_end: TrialEnd | None = None, tick_s: float = 1.0) -> dict[str, dict[str, Any]]:
    """Run ``trials`` of the sweep in ``directory`` on Ray; how each ended, by trial id.

    ``on_trial_end`` runs in this process as each trial ends (MLflow logging); ``on_progress`` when
    a trial ends and every ``tick_s`` seconds. Ctrl-C (SIGINT) cancels the trials in flight within a
    tick (their run directories stay resumable) and raises ``KeyboardInterrupt``.
    """
    ray = require("ray", "ray", "lmaas-tune sweep (it runs its trials on Ray)")
    started = _connect(ray, options.address)
    session = uuid.uuid4().hex[:12]
    threads = max(1, int(options.cpus_per_trial))
    remote = ray.remote(run_trial).options(
        num_cpus=options.cpus_per_trial, num_gpus=options.gpus_per_trial, max_retries=options.max_retries,
        retry_exceptions=False, scheduling_strategy="SPREAD",
    )
    everything = directory.trials
    before = {t.id for t in everything if directory.finished(t.id)}
    pending: deque[TrialSpec] = deque(trials)
    flight: dict[Any, TrialSpec] = {}
    ended: dict[str, dict[str, Any]] = {}

    def report() -> None:
        if on_progress is not None:
            failed = sum(1 for e in ended.values() if e["event"] == "failed")
            started = sum(running(directory, t.id, session) for t in flight.values())
            on_progress(SweepProgress(total=len(everything), done=len(before) + len(ended) - failed, failed=failed,
                                      running=started, queued=len(flight) - started + len(pending),
                                      best=best_dev(directory, everything)))

    stop = threading.Event()
    previous = _trap_sigint(stop)
    try:
        while pending or flight:
            if stop.is_set():
                raise KeyboardInterrupt
            while pending and (options.max_concurrent is None or len(flight) < options.max_concurrent):
                trial = pending.popleft()
                flight[remote.remote(trial.to_dict(), str(directory.path), session, threads)] = trial
            report()
            ready, _ = ray.wait(list(flight), num_returns=1, timeout=tick_s)
            for ref in ready:
                trial = flight.pop(ref)
                try:
                    end = dict(ray.get(ref))
                except ray.exceptions.RayError as exc:  # the worker died more often than retried, a lost node...
                    cause = getattr(exc, "cause", None)
                    end = {"id": trial.id, "event": "failed", "error": one_line(cause or exc), "session": session}
                    directory.log_attempt(trial.id, end)
                ended[trial.id] = end
                if on_trial_end is not None:
                    on_trial_end(trial, end)
        report()
    except KeyboardInterrupt:
        for ref in flight:
            ray.cancel(ref, force=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if started:
            ray.shutdown()
    return ended


def _trap_sigint(stop: threading.Event) -> Any:
    """Turn SIGINT into ``stop`` while the trials run (``ray.wait`` swallows a KeyboardInterrupt raised
    inside it); the previous handler, or ``None`` off the main thread, where no handler can be set."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: at once
            raise KeyboardInterrupt
        stop.set()

    return signal.signal(signal.SIGINT, on_sigint)
