"""How the CLI shows progress: a rich live bar on a terminal, plain lines otherwise."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lmaas_tune.tuning.events import BudgetSpent, EvaluationProgress, Event, GenerationReport, Retry


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def describe(r: GenerationReport) -> str:
    dev = "" if r.dev_metric is None else f"  dev {_fmt(r.dev_metric)} (best {_fmt(r.best_dev)})"
    return (
        f"gen {r.generation:>4}  calls {r.calls}/{r.budget}  best loss {r.best_loss:.4f}  "
        f"train acc {r.train_accuracy:.3f}{dev}  {r.calls_per_s:.2f} calls/s"
    )


class Display:
    """Receives tuner events and evaluation progress; silent when ``quiet``."""

    def __init__(self, console: Console, *, quiet: bool = False, live: bool | None = None) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal if live is None else live
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "Display":
        if self.live and not self.quiet:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)

    def bar(self, name: str, done: int, total: int, status: str = "") -> None:
        if self.quiet:
            return
        if self._progress is None:
            return
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=total, status=status)
        self._progress.update(self._tasks[name], completed=done, total=total, status=status)

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event)

    def _generation(self, event: GenerationReport) -> None:
        if self._progress is None:
            self.note(describe(event))
        else:
            status = f"loss {event.best_loss:.4f} | train {event.train_accuracy:.3f} | dev {_fmt(event.best_dev)} | {event.calls_per_s:.2f} calls/s"
            self.bar("tuning", event.calls, event.budget, status)

    def _evaluation(self, event: EvaluationProgress) -> None:
        self.evaluation_progress(event.done, event.total, event.what)

    def _retry(self, event: Retry) -> None:
        after = "" if event.delay is None else f", again in {event.delay:.1f} s"
        times = "" if event.retries == 1 else f" ({event.retries} retries)"
        self.note(f"retrying{times}: {event.reason}{after}")

    def _budget_spent(self, event: BudgetSpent) -> None:
        self.note(f"budget spent: {event.calls}/{event.budget} calls, {event.elapsed:.1f} s of tuning")

    # dev checks show in the generation line's dev column, so they need no line of their own
    _handlers: dict[type, Any] = {GenerationReport: _generation, EvaluationProgress: _evaluation,
                                  Retry: _retry, BudgetSpent: _budget_spent}

    def evaluation_progress(self, done: int, total: int, what: str = "test") -> None:
        if self._progress is None:
            if done == total:
                self.note(f"{what}: scored {total} examples")
        else:
            self.bar(what, done, total)


def make_console(stderr: bool = False) -> Console:
    """A console that looks up sys.stdout/sys.stderr when it writes (so redirection works)."""
    return Console(stderr=stderr, highlight=False, soft_wrap=True)
