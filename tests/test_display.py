"""The CLI's progress display: every event a fit emits either shows or is covered by another line."""

from __future__ import annotations

import io

from rich.console import Console

from lmaas_tune.cli.display import Display
from lmaas_tune.tuning.events import BudgetSpent, DevChecked, Retry


def _shown(events: list[object], *, live: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False, soft_wrap=True)
    with Display(console, live=live) as display:
        for event in events:
            display(event)  # type: ignore[arg-type]
    return out.getvalue()


def test_retries_and_the_spent_budget_are_shown_in_plain_and_live_mode() -> None:
    events = [Retry(1, "HTTP 503 from http://127.0.0.1:9/v1/score", 0.5),
              Retry(3, "connection reset", None),
              BudgetSpent(calls=40, budget=40, generation=2, elapsed=12.34)]
    for live in (False, True):
        text = _shown(events, live=live)
        assert "retrying: HTTP 503 from http://127.0.0.1:9/v1/score, again in 0.5 s" in text
        assert "retrying (3 retries): connection reset" in text
        assert "budget spent: 40/40 calls, 12.3 s of tuning" in text


def test_dev_checks_add_no_line_and_quiet_shows_nothing() -> None:
    assert _shown([DevChecked(1, 20, "accuracy", 0.75, 0.75, True)], live=False) == ""
    out = io.StringIO()
    with Display(Console(file=out), quiet=True, live=False) as display:
        display(Retry(1, "timeout", 1.0))
        display(BudgetSpent(4, 4, 1, 1.0))
    assert out.getvalue() == ""
