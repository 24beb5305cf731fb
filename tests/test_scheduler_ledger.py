"""Budget ledger, population scheduler, CMA-ES seam and the tuner loop.

Scheduler and budget logic run against a deterministic fake backend (logits are a fixed function of
the prompt values); one end-to-end fit runs on the tiny causal transformer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lmaas_tune.backends.base import Backend, BackendInfo, ModelKind, Query, ScoringBatch, check_prompts
from lmaas_tune.methods import PRESETS, TuneConfig
from lmaas_tune.errors import (
    BackendError,
    BudgetExhaustedError,
    ConfigError,
    NonFiniteLossError,
    RunDirectoryError,
)
from lmaas_tune.tuning.fewshot import FewShotSplit
from lmaas_tune.tuning.ledger import BudgetLedger
from lmaas_tune.methods.optimizers import CMAES
from lmaas_tune.projection import Projection, ProjectionSpec
from lmaas_tune.runs.directory import RunDirectory
from lmaas_tune.backends.traffic import record_retry, record_traffic
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.tuning.scheduler import PopulationScheduler
from lmaas_tune.tasks import custom_task
from lmaas_tune.tasks.task import Task
from lmaas_tune.tuning.tuner import BlackBoxTuner, EvaluationProgress, GenerationReport

HIDDEN = 8

pytestmark = pytest.mark.filterwarnings("ignore:Could not import matplotlib")


def _unit_vector(text: str, size: int) -> np.ndarray:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(size)


class TransientError(BackendError):
    """A failure worth another attempt, as a service client sees a 503."""


class FakeBackend(Backend):
    """Logits ``[p, n, c] = mean_l(prompt[p, l]) . (q_n * w_c) + b_nc``, from hashes of the texts.

    Records every candidate it receives, per batch. ``jitter`` sleeps a random (seeded) moment
    before answering so that concurrent chunks complete out of order; ``fail`` makes the first
    attempt of about a third of the distinct chunks fail with :class:`TransientError`. Like a real
    service client, the fake retries on its own (up to ``attempts`` tries) and reports each
    attempt, failure and retry through the traffic meter.
    """

    def __init__(self, *, max_concurrency: int = 1, max_prompts_per_call: int | None = None,
                 jitter: bool = False, fail: bool = False, seed: int = 0, attempts: int = 3) -> None:
        self._info = BackendInfo(
            model_id="fake", kind=ModelKind.CAUSAL, hidden_size=HIDDEN, num_layers=1, embedding_std=0.5,
            max_length=10_000, max_concurrency=max_concurrency, max_prompts_per_call=max_prompts_per_call,
        )
        self.jitter, self.fail, self.attempts = jitter, fail, attempts
        self._rng = random.Random(seed)
        self._failed_once: set[str] = set()
        self.received: Counter[str] = Counter()  # candidates that reached score(), per batch key
        self.scored: Counter[str] = Counter()  # candidates answered successfully
        self.failed: Counter[str] = Counter()
        self.starts: list[tuple[str, int]] = []  # (batch key, candidates received so far on it)
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def info(self) -> BackendInfo:
        return self._info

    async def token_lengths(self, batch: ScoringBatch) -> tuple[int, ...]:
        return tuple(len(q.prefix.split()) + 1 for q in batch.queries)

    @staticmethod
    def logits(prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        mean = np.zeros((1, HIDDEN)) if prompts is None or prompts.shape[1] == 0 else prompts.mean(axis=1)
        q = np.stack([_unit_vector(x.prefix, HIDDEN) for x in batch.queries])  # [N, D]
        w = np.stack([_unit_vector(word, HIDDEN) for word in batch.label_words])  # [C, D]
        b = 0.1 * np.stack([_unit_vector(x.prefix + "bias", len(batch.label_words)) for x in batch.queries])
        return (np.einsum("pd,nd,cd->pnc", mean, q, w) + b[None]).astype(np.float32)

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        arr = check_prompts(prompts, self._info)
        for attempt in range(1, self.attempts + 1):
            record_traffic(attempts=1)
            try:
                return await self.answer(arr, batch)
            except TransientError as exc:
                record_traffic(failures=1)
                if attempt == self.attempts:
                    raise
                record_retry(str(exc), 0.0)  # tests do not sleep between tries
        raise AssertionError("unreachable")

    async def answer(self, arr: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        """One attempt."""
        n = 1 if arr is None else len(arr)
        self.received[batch.key] += n
        self.starts.append((batch.key, self.received[batch.key]))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self._rng.uniform(0, 0.002) if self.jitter else 0)
            if self.fail and arr is not None:
                digest = hashlib.sha256(arr.tobytes() + batch.key.encode()).hexdigest()
                if digest not in self._failed_once and int(digest[:4], 16) % 3 == 0:
                    self._failed_once.add(digest)
                    self.failed[batch.key] += n
                    raise TransientError("injected transient failure")
            out = self.logits(arr, batch)
        finally:
            self.in_flight -= 1
        self.scored[batch.key] += n
        return out


def _write_task(tmp_path: Path, per_class: int = 12) -> Task:
    words = ["great", "good", "fun", "bad", "terrible", "dull"]
    lines = ["sentence\tlabel"]
    for i in range(per_class):
        lines.append(f"a {words[i % 3]} movie number {i}\t1")
        lines.append(f"a {words[3 + i % 3]} film number {i}\t0")
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", "utf-8")
    (tmp_path / "test.tsv").write_text("\n".join(lines[:9]) + "\n", "utf-8")
    return custom_task(template="{sentence} . It was {mask}", label_words="bad,great",
                       train=str(tmp_path / "train.tsv"), test=str(tmp_path / "test.tsv"))


def _keys(task: Task, cfg: TuneConfig) -> tuple[str, str]:
    split = FewShotSplit.draw(task.load("train"), cfg.k_shot, cfg.seed, task.num_labels)
    return task.render(split.train, ModelKind.CAUSAL).key, task.render(split.dev, ModelKind.CAUSAL).key


def _config(budget: int, **kw) -> TuneConfig:
    args = dict(prompt_length=3, intrinsic_dim=6, popsize=6, budget=budget, k_shot=4, eval_every=12, seed=7)
    args.update(kw)
    return TuneConfig(**args)


async def _fit(task: Task, backend: Backend, cfg: TuneConfig, **kw):
    events: list = []
    result = await BlackBoxTuner(task, backend, cfg, callbacks=[events.append], **kw).fit()
    return result, [e for e in events if isinstance(e, GenerationReport)], events


# -- the ledger ----------------------------------------------------------------------------------


def test_ledger_reserve_commit_release() -> None:
    ledger = BudgetLedger(10)
    assert ledger.reserve(6) == 6 and ledger.remaining == 4
    assert ledger.reserve(6) == 4 and ledger.remaining == 0  # never more than what is left
    with pytest.raises(BudgetExhaustedError, match="10 calls"):
        ledger.reserve(1)
    ledger.commit(6)
    ledger.release(4)
    assert (ledger.calls, ledger.reserved, ledger.remaining) == (6, 0, 4)
    assert not ledger.exhausted
    with pytest.raises(RuntimeError):
        ledger.commit(1)  # nothing reserved
    assert ledger.reserve(0) == 0
    assert ledger.reserve(4) == 4
    ledger.commit(4)
    assert ledger.exhausted and ledger.to_dict()["calls"] == 10
    with pytest.raises(ConfigError):
        BudgetLedger(0)


# -- the scheduler -------------------------------------------------------------------------------


def _batch(n: int = 5) -> ScoringBatch:
    return ScoringBatch(tuple(Query(f"sentence number {i} . It was") for i in range(n)), ("bad", "great"))


def _population(p: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((p, 3, HIDDEN)).astype(np.float32)


@pytest.mark.parametrize(("concurrency", "chunk_size"), [(1, None), (3, None), (4, 2), (8, 1), (2, 100)])
async def test_scheduler_lands_results_by_index(concurrency: int, chunk_size: int | None) -> None:
    backend = FakeBackend(jitter=True, seed=concurrency)
    ledger = BudgetLedger(100)
    sched = PopulationScheduler(backend, ledger, concurrency=concurrency, chunk_size=chunk_size)
    prompts, batch = _population(11), _batch()
    assert ledger.reserve(11) == 11
    out = await sched.evaluate(prompts, batch)
    np.testing.assert_allclose(out, FakeBackend.logits(prompts, batch), rtol=1e-6)
    assert (ledger.calls, ledger.reserved) == (11, 0)
    assert backend.received[batch.key] == backend.scored[batch.key] == 11
    assert backend.max_in_flight <= concurrency
    chunks = -(-11 // (chunk_size or -(-11 // concurrency)))
    assert backend.max_in_flight == min(concurrency, chunks)  # chunks really were in flight together


async def test_scheduler_uses_backend_limits() -> None:
    backend = FakeBackend(max_concurrency=3, max_prompts_per_call=2, jitter=True)
    sched = PopulationScheduler(backend, BudgetLedger(100))
    assert (sched.concurrency, sched.chunk_size) == (3, 2)
    await sched.evaluate(_population(7), _batch(), charged=False)
    assert backend.max_in_flight == 3
    assert sched.ledger.uncharged_calls == 7 and sched.ledger.calls == 0


async def test_retries_are_not_charged_twice() -> None:
    backend = FakeBackend(fail=True, jitter=True)
    ledger = BudgetLedger(40)
    sched = PopulationScheduler(backend, ledger, concurrency=4, chunk_size=1)
    prompts, batch = _population(40, seed=3), _batch()
    ledger.reserve(40)
    out = await sched.evaluate(prompts, batch)
    np.testing.assert_allclose(out, FakeBackend.logits(prompts, batch), rtol=1e-6)
    assert backend.failed[batch.key] > 0  # the fake did inject failures
    assert ledger.calls == 40 == backend.scored[batch.key]
    assert ledger.retries == ledger.failures == backend.failed[batch.key]
    assert ledger.attempts == 40 + ledger.retries


async def test_exhausted_retries_charge_nothing() -> None:
    class AlwaysFails(FakeBackend):
        async def answer(self, arr, batch):
            self.received[batch.key] += len(arr)
            raise TransientError("down")

    backend = AlwaysFails(attempts=3)
    ledger = BudgetLedger(10)
    sched = PopulationScheduler(backend, ledger)
    ledger.reserve(4)
    with pytest.raises(TransientError):
        await sched.evaluate(_population(4), _batch())
    assert (ledger.calls, ledger.reserved, ledger.remaining) == (0, 0, 10)
    assert (ledger.attempts, ledger.retries, ledger.failures) == (3, 2, 3)


async def test_failed_chunk_releases_its_calls() -> None:
    class FailsOnChunk(FakeBackend):
        async def score(self, prompts, batch):
            if prompts[0, 0, 0] == 99.0:
                await asyncio.sleep(0)
                raise BackendError("not retryable")
            return await super().score(prompts, batch)

    backend = FailsOnChunk()
    ledger = BudgetLedger(20)
    prompts = _population(8)
    prompts[6, 0, 0] = 99.0  # the 4th chunk of 2
    sched = PopulationScheduler(backend, ledger, concurrency=1, chunk_size=2)
    ledger.reserve(8)
    with pytest.raises(BackendError, match="not retryable"):
        await sched.evaluate(prompts, _batch())
    assert ledger.reserved == 0
    assert ledger.calls == backend.scored[_batch().key] == 6  # only what was scored is charged
    assert ledger.retries == 0 and ledger.failures == 1


async def test_wrong_logit_shape_is_an_error() -> None:
    class Broken(FakeBackend):
        async def score(self, prompts, batch):
            return (await super().score(prompts, batch))[:, :-1]

    with pytest.raises(BackendError, match="shape"):
        await PopulationScheduler(Broken(), BudgetLedger(5)).evaluate(_population(2), _batch(), charged=False)


# -- CMA-ES behind the optimizer seam --------------------------------------------------------------


def test_cmaes_same_seed_same_asks_despite_global_rng_use() -> None:
    a, b = CMAES(6, popsize=5, seed=11), CMAES(6, popsize=5, seed=11)
    rng = np.random.default_rng(0)
    for gen in range(4):
        np.random.seed(1000 + gen)  # other code reseeding and using the global RNG...
        x = a.ask()
        np.random.rand(37)
        y = b.ask()
        np.random.standard_normal(3)
        np.testing.assert_array_equal(x, y)
        assert x.shape == (5, 6)
        losses = rng.standard_normal(5)
        a.tell(x, losses)
        np.random.rand(5)
        b.tell(y, losses)
    assert a.generation == b.generation == 4
    np.testing.assert_array_equal(a.best_z, b.best_z)
    assert not np.array_equal(CMAES(6, popsize=5, seed=12).ask(), CMAES(6, popsize=5, seed=11).ask())


def test_cmaes_leaves_the_global_rng_alone() -> None:
    np.random.seed(5)
    state = np.random.get_state()
    opt = CMAES(4, popsize=4, seed=3)
    x = opt.ask()
    opt.tell(x, np.arange(4.0))
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


def test_cmaes_seed_zero_is_reproducible() -> None:
    np.testing.assert_array_equal(CMAES(3, popsize=4, seed=0).ask(), CMAES(3, popsize=4, seed=0).ask())


def test_cmaes_non_finite_losses() -> None:
    opt = CMAES(3, popsize=4, seed=1)
    x = opt.ask()
    opt.tell(x, np.array([np.nan, 2.0, np.inf, 1.0]))
    assert opt.best_loss == 1.0
    np.testing.assert_array_equal(opt.best_z, x[3])
    with pytest.raises(NonFiniteLossError):
        opt.tell(opt.ask(), np.array([np.nan] * 4))


def test_cmaes_bounds_and_errors() -> None:
    opt = CMAES(5, popsize=6, sigma0=10.0, seed=2, bounds=(-1.0, 1.0))
    x = opt.ask()
    assert x.min() >= -1.0 and x.max() <= 1.0
    with pytest.raises(ConfigError):
        CMAES(5, popsize=1)
    with pytest.raises(ConfigError):
        CMAES(5, sigma0=0)


# -- the tuner loop on the fake backend ----------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 8])
@pytest.mark.parametrize("budget", [6, 7, 24, 27, 35])
async def test_ledger_is_exact(tmp_path: Path, budget: int, concurrency: int) -> None:
    task = _write_task(tmp_path)
    cfg = _config(budget)
    train_key, dev_key = _keys(task, cfg)
    backend = FakeBackend(jitter=concurrency > 1, seed=budget)
    result, reports, _ = await _fit(task, backend, cfg, concurrency=concurrency)

    assert result.calls == result.ledger["calls"] == budget
    assert backend.received[train_key] == backend.scored[train_key] == budget
    # no training call started past the budget
    assert max(n for key, n in backend.starts if key == train_key) == budget
    assert len(reports) == math.ceil(budget / cfg.popsize)
    assert [r.calls for r in reports] == [min(budget, (g + 1) * cfg.popsize) for g in range(len(reports))]
    assert reports[-1].calls == budget
    # dev checks: uncharged, one candidate each, at every multiple of eval_every and at the end
    checks = sum(r.dev_metric is not None for r in reports)
    expected_checks = len({min(budget, -(-c // cfg.eval_every) * cfg.eval_every)
                           for c in range(cfg.popsize, budget + cfg.popsize, cfg.popsize)})
    assert reports[-1].dev_metric is not None
    assert result.ledger["uncharged_calls"] == backend.scored[dev_key] == checks
    assert checks == expected_checks
    assert (result.ledger["retries"], result.ledger["failures"]) == (0, 0)
    assert result.test is not None and result.test.n == 8


async def test_partial_last_generation_scores_only_what_is_left(tmp_path: Path) -> None:
    task = _write_task(tmp_path)
    cfg = _config(27)
    train_key, _ = _keys(task, cfg)
    backend = FakeBackend(max_prompts_per_call=100)
    await _fit(task, backend, cfg, concurrency=1)
    sizes = [n for key, n in backend.starts if key == train_key]
    assert np.diff([0, *sizes]).tolist() == [6, 6, 6, 6, 3]


async def test_same_seed_same_result(tmp_path: Path) -> None:
    task = _write_task(tmp_path)
    cfg = _config(30)
    r1, h1, _ = await _fit(task, FakeBackend(), cfg)
    r2, h2, _ = await _fit(task, FakeBackend(), cfg)
    np.testing.assert_array_equal(r1.best_z, r2.best_z)
    assert (r1.dev, r1.train_loss, r1.test.predictions) == (r2.dev, r2.train_loss, r2.test.predictions)
    strip = lambda rs: [{k: v for k, v in r.to_record().items() if k not in ("elapsed", "calls_per_s")} for r in rs]  # noqa: E731
    assert strip(h1) == strip(h2)
    r3, _, _ = await _fit(task, FakeBackend(), _config(30, seed=8))
    assert not np.array_equal(r1.best_z, r3.best_z)


async def test_concurrency_and_retries_do_not_change_the_result(tmp_path: Path) -> None:
    task = _write_task(tmp_path)
    cfg = _config(33)
    train_key, _ = _keys(task, cfg)
    base, base_hist, _ = await _fit(task, FakeBackend(), cfg, concurrency=1)

    busy = FakeBackend(jitter=True, seed=1)
    r8, h8, _ = await _fit(task, busy, cfg, concurrency=8)
    assert busy.max_in_flight > 1
    np.testing.assert_array_equal(r8.best_z, base.best_z)
    assert [r.loss_min for r in h8] == [r.loss_min for r in base_hist]
    assert r8.test.predictions == base.test.predictions

    flaky = FakeBackend(jitter=True, fail=True, seed=2)
    rf, _, _ = await _fit(task, flaky, cfg, concurrency=8)
    assert flaky.failed[train_key] > 0 and rf.ledger["retries"] > 0
    np.testing.assert_array_equal(rf.best_z, base.best_z)
    assert rf.dev == base.dev
    # retries never double-charge, and no more distinct candidates than the budget were sent
    assert rf.calls == rf.ledger["calls"] == flaky.scored[train_key] == 33
    assert flaky.received[train_key] - flaky.failed[train_key] == 33
    assert rf.ledger["retries"] == rf.ledger["failures"] == len(flaky._failed_once)


async def test_dev_check_keeps_only_strict_improvements(tmp_path: Path) -> None:
    task = _write_task(tmp_path)
    cfg = _config(60, eval_every=6, k_shot=2)  # 4 dev examples: coarse metric, ties are common
    result, reports, _ = await _fit(task, FakeBackend(), cfg, run_dir=tmp_path / "run")
    best = None
    for r in reports:
        assert r.dev_metric is not None
        best = r.dev_metric if best is None or r.dev_metric > best else best
        assert r.best_dev == best
        assert r.best_loss == min(x.loss_min for x in reports[: r.generation])
    # ties do not replace the prompt: the kept one is the first that reached the best dev metric
    first = next(r.generation for r in reports if r.dev_metric == result.dev)
    assert sum(r.dev_metric == result.dev for r in reports) > 1  # a tie happened, so this checks something
    assert RunDirectory.open(tmp_path / "run").best["checked_at_generation"] == first
    assert result.dev == max(r.dev_metric for r in reports)


def test_tune_config_validation() -> None:
    with pytest.raises(ConfigError, match="smaller than --popsize"):
        TuneConfig(popsize=20, budget=10)
    with pytest.raises(ConfigError, match="at least 2"):
        TuneConfig(popsize=1)
    with pytest.raises(ConfigError, match="low < high"):
        TuneConfig(bounds=(5, -5))
    with pytest.raises(ConfigError, match="prompt-length"):
        TuneConfig(prompt_length=0)
    cfg = TuneConfig(bounds=(-5, 5))
    assert TuneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert PRESETS.get("paper").config == TuneConfig()
    assert (TuneConfig().prompt_length, TuneConfig().intrinsic_dim, TuneConfig().popsize, TuneConfig().budget) == (50, 500, 20, 8000)
    assert cfg.with_overrides(budget=100, seed=None).budget == 100
    with pytest.raises(ConfigError, match="unknown setting"):
        cfg.with_overrides(nonsense=1)


# -- end to end on the tiny causal transformer ---------------------------------------------------


async def test_fit_end_to_end_writes_the_run_directory(tmp_path: Path, llama_backend) -> None:
    task = _write_task(tmp_path)
    cfg = TuneConfig(prompt_length=2, intrinsic_dim=8, popsize=4, budget=14, k_shot=2, eval_every=8, seed=3)
    run_dir = tmp_path / "run"
    result, reports, events = await _fit(task, llama_backend, cfg, run_dir=run_dir,
                                          record=RunConfig(cfg, notes={"label": "tiny-llama"}))

    assert result.calls == 14 and result.run_dir == run_dir
    run = RunDirectory.open(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.json", "best_prompt.npy", "checkpoint-cma-000004.pkl", "checkpoint.json", "config.json",
        "history.jsonl", "result.json"]
    record = run.record
    assert record.notes["label"] == "tiny-llama" and record.tune == cfg

    history = run.history()
    assert len(history) == len(reports) == 4  # 4 + 4 + 4 + 2 calls
    assert [h["generation"] for h in history] == [1, 2, 3, 4]
    assert [h["calls"] for h in history] == [4, 8, 12, 14]
    assert all(math.isfinite(h["loss_min"]) for h in history)
    lines = (run_dir / "history.jsonl").read_text("utf-8").splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)

    best = run.best
    np.testing.assert_allclose(best["z"], result.best_z)
    assert best["dev"] == result.dev
    spec = ProjectionSpec(**best["projection"])
    assert spec == result.projection and spec.hidden_size == llama_backend.info.hidden_size
    prompt = np.load(run_dir / "best_prompt.npy", allow_pickle=False)
    assert prompt.shape == (2, llama_backend.info.hidden_size) and prompt.dtype == np.float32
    np.testing.assert_allclose(prompt, Projection(spec)(np.array(best["z"]))[0], rtol=1e-6)

    final = run.result
    assert final["calls"] == 14 and final["ledger"]["calls"] == 14
    assert final["test"]["n"] == 8 and 0.0 <= final["test"]["value"] <= 1.0
    assert final["dropped"] == {"train": 0, "dev": 0}
    assert any(isinstance(e, EvaluationProgress) and e.done == e.total == 8 for e in events)

    # the saved prompt scores the test set exactly as the fit reported
    test = task.render(task.load("test"), ModelKind.CAUSAL)
    logits = await llama_backend.score(prompt[None], test)
    assert tuple(int(p) for p in logits[0].argmax(-1)) == result.test.predictions

    # the same seed on the real model gives the same result again; the directory is not reused
    again, _, _ = await _fit(task, llama_backend, cfg, evaluate_test=False)
    np.testing.assert_array_equal(again.best_z, result.best_z)
    assert again.test is None
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        await BlackBoxTuner(task, llama_backend, cfg, run_dir=run_dir).fit()


def test_run_directory_errors_and_torn_history(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match="not a run directory"):
        RunDirectory.open(tmp_path)
    run = RunDirectory.create(tmp_path / "r", RunConfig(TuneConfig()))
    with pytest.raises(RunDirectoryError, match="missing"):
        run.result
    run.append_history({"generation": 1})
    run.append_history({"generation": 2})
    with (run.path / "history.jsonl").open("a") as fh:
        fh.write('{"generation": 3, "los')  # a crash mid-write
    assert run.history() == [{"generation": 1}, {"generation": 2}]
    (run.path / "history.jsonl").write_text('{"generation": 1}\nnot json\n{"generation": 3}\n')
    with pytest.raises(RunDirectoryError, match="line 2"):
        run.history()
