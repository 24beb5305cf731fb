"""The query budget: one call per successfully scored candidate (the paper's unit)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lmaas_tune.errors import BudgetExhaustedError, ConfigError


@dataclass
class LedgerSnapshot:
    budget: int
    calls: int
    attempts: int
    retries: int
    failures: int
    uncharged_calls: int
    bytes_up: int
    bytes_down: int
    eval_calls: int = 0


class BudgetLedger:
    """Counts calls against a budget; a call must be reserved before it may start.

    ``reserve(n)`` grants at most what is left (never more), ``commit`` turns reserved calls into
    charged ones once scored, ``release`` returns them if scoring failed. Attempts, retries,
    failures and traffic are recorded separately and never charged. Dev checks are recorded as
    ``uncharged_calls`` (one per candidate checked); scoring a fixed prompt on a whole set (the
    final test evaluation, ``evaluate``, each batch of ``predict``) as ``eval_calls``, also
    uncharged.
    """

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ConfigError(f"budget must be at least 1 call; got {budget}")
        self.budget = budget
        self.calls = 0
        self.reserved = 0
        self.attempts = 0
        self.retries = 0
        self.failures = 0
        self.uncharged_calls = 0
        self.eval_calls = 0
        self.bytes_up = 0
        self.bytes_down = 0

    @classmethod
    def for_scoring(cls) -> "BudgetLedger":
        """A ledger for work that is never charged (``evaluate``, ``predict``): a budget of 0 calls."""
        ledger = cls(1)
        ledger.budget = 0
        return ledger

    @property
    def remaining(self) -> int:
        return self.budget - self.calls - self.reserved

    @property
    def exhausted(self) -> bool:
        return self.calls >= self.budget

    def reserve(self, n: int) -> int:
        granted = max(0, min(n, self.remaining))
        if n > 0 and granted == 0:
            raise BudgetExhaustedError(f"the budget of {self.budget} calls is spent")
        self.reserved += granted
        return granted

    def commit(self, n: int) -> None:
        if n > self.reserved:
            raise RuntimeError("committing calls that were never reserved")
        self.reserved -= n
        self.calls += n

    def release(self, n: int) -> None:
        self.reserved -= min(n, self.reserved)

    def snapshot(self) -> LedgerSnapshot:
        return LedgerSnapshot(self.budget, self.calls, self.attempts, self.retries, self.failures,
                              self.uncharged_calls, self.bytes_up, self.bytes_down, self.eval_calls)

    def to_dict(self) -> dict[str, int]:
        return asdict(self.snapshot())

    def restore(self, saved: dict[str, int]) -> None:
        """Counters from :meth:`to_dict` (a checkpoint); nothing may be reserved, budgets must agree."""
        if self.reserved:
            raise RuntimeError("restoring a ledger with calls in flight")
        if int(saved["budget"]) != self.budget:
            raise ConfigError(f"the saved ledger has a budget of {saved['budget']} calls, not {self.budget}")
        for name in ("calls", "attempts", "retries", "failures", "uncharged_calls", "bytes_up", "bytes_down"):
            setattr(self, name, int(saved[name]))
        self.eval_calls = int(saved.get("eval_calls", 0))  # absent from checkpoints written before it existed
