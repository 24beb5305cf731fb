"""The two-stage optimiser (CMA-ES, then COBYLA from its best point; ``optimizer="cma-cobyla"``).

Alone on a quadratic: the stage split, one candidate per ask in stage 2, stage 2 improving on stage
1, checkpoints restored bit for bit (in each stage, and across a COBYLA restart), tampered
checkpoints refused, and no COBYLA thread outliving its optimiser. Through the tuner on the tiny
causal model: the budget charged exactly, two runs with one seed alike, and runs stopped in stage 1
and in stage 2 resumed to exactly the uninterrupted outcome. No timings.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from pathlib import Path

import numpy as np
import pause_points
import pytest
from remote_support import sentiment_fit_args, sentiment_task
from resume_support import Crash, assert_same_outcome, checkpoint_doc, history

from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.errors import ConfigError, RunDirectoryError
from lmaas_tune.methods import METHOD_PRESETS, TuneConfig, tune_config
from lmaas_tune.methods.bbt import shallow_optimizer
from lmaas_tune.methods.optimizers import CMACobyla, two_stage
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.tasks.task import Task
from lmaas_tune.tuning.tuner import BlackBoxTuner

pytestmark = pytest.mark.filterwarnings("ignore:Could not import matplotlib")

DIM = 6
TARGET = np.linspace(-1.0, 1.0, DIM)


def quadratic(z: np.ndarray) -> float:
    return float(((z - TARGET) ** 2).sum())


def make(budget: int = 70, fraction: float = 0.5, **kw: object) -> CMACobyla:
    return CMACobyla(DIM, popsize=5, sigma0=0.5, seed=3, budget=budget, cma_fraction=fraction, **kw)  # type: ignore[arg-type]


def drive(opt: CMACobyla, calls: int, spent: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The tuner's loop on the quadratic: reserve what is left, score, tell only whole populations."""
    seen = []
    while spent < calls:
        population = opt.ask()
        n = min(len(population), calls - spent)
        losses = np.array([quadratic(z) for z in population[:n]])
        spent += n
        if n == len(population):
            opt.tell(population, losses)
        seen.append((np.array(population[:n]), losses))
    return seen


def cobyla_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lmaas-tune-cobyla"]


@pytest.fixture(autouse=True)
def no_thread_left() -> object:
    yield
    for thread in cobyla_threads():  # every test closes or drops its optimisers
        gc.collect()
        thread.join(timeout=120)
        assert not thread.is_alive(), "a COBYLA thread outlived its optimiser"


@pytest.mark.parametrize(("budget", "popsize", "fraction", "generations"), [
    (400, 20, 0.5, 10), (38, 4, 0.5, 4), (10, 4, 0.1, 1), (38, 4, 1.0, 9), (100, 3, 0.57, 19), (40, 4, 1.0, 10),
])
def test_stage_one_is_whole_generations_of_the_fraction(budget: int, popsize: int, fraction: float,
                                                         generations: int) -> None:
    assert two_stage.stage1_generations(budget, popsize, fraction) == generations


def test_stage_two_asks_one_candidate_at_a_time_and_improves_on_stage_one() -> None:
    opt = make()
    assert (opt.stage1_generations, opt.stage2_calls) == (7, 35)
    seen = drive(opt, 70)
    assert [len(p) for p, _ in seen] == [5] * 7 + [1] * 35  # every call charged once, none left over
    assert opt.stage == 2 and opt.generation == 42 and len(opt.losses) == 35
    stage1_best = min(float(losses.min()) for _, losses in seen[:7])
    assert opt.start is not None and opt.start[1] == stage1_best  # COBYLA starts from CMA-ES's best
    assert opt.best_loss < 0.5 * stage1_best
    assert opt.best_loss == min(float(losses.min()) for _, losses in seen)
    np.testing.assert_array_equal(opt.best_z, min(((p[0], l[0]) for p, l in seen[7:]), key=lambda c: c[1])[0])
    assert opt._run is None  # the planned budget is spent: its thread has ended


def test_same_seed_same_candidates() -> None:
    a, b = drive(make(), 70), drive(make(), 70)
    for (pa, la), (pb, lb) in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(la, lb)


@pytest.mark.parametrize("stop_after", [3, 7, 20])  # in stage 1, at the switch, in stage 2
def test_checkpoint_and_restore_continue_bit_for_bit(stop_after: int) -> None:
    want = make()
    full = drive(want, 70)
    spent = sum(len(p) for p, _ in full[:stop_after])
    first = make()
    drive(first, spent)
    state, blob = first.checkpoint()
    assert state["stage"] == (1 if stop_after < 7 else 2) and state["generation"] == stop_after
    state = json.loads(json.dumps(state, allow_nan=False))  # as checkpoint.json stores it
    again = make()
    again.restore(state, blob)
    (mine, my_blob), (theirs, their_blob) = again.checkpoint(), first.checkpoint()
    assert mine == theirs
    if state["stage"] == 2:  # a CMA-ES strategy pickles apart once restored; its continuation is checked below
        assert my_blob == their_blob
    first.close()
    rest = drive(again, 70, spent)
    for (pa, la), (pb, lb) in zip(rest, full[stop_after:], strict=True):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(la, lb)
    assert again.checkpoint() == want.checkpoint()


def test_a_cobyla_run_that_stops_early_is_restarted_and_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(two_stage, "RHOEND", 0.3)  # COBYLA stops long before the budget is spent
    opt = make(budget=200)
    seen = drive(opt, 200)
    assert sum(len(p) for p, _ in seen) == 200 and opt._runs > 1
    mid = make(budget=200)
    drive(mid, 150)
    state, blob = mid.checkpoint()
    mid.close()
    assert state["cobyla"]["runs"] > 1
    again = make(budget=200)
    again.restore(state, blob)
    drive(again, 200, 150)
    assert again.checkpoint() == opt.checkpoint()


def test_a_changed_checkpoint_is_refused() -> None:
    opt = make()
    drive(opt, 50)
    state, blob = opt.checkpoint()
    opt.close()
    losses = np.frombuffer(blob, dtype="<f8").copy()
    losses[2] += 1.0
    start = json.loads(json.dumps(state))
    start["cobyla"]["start"][0] += 1e-9
    digest = json.loads(json.dumps(state))
    digest["cobyla"]["points_sha256"] = "0" * 64
    other = json.loads(json.dumps(state))
    other["budget"] = 71
    for bad_state, bad_blob, match in [
        (state, losses.tobytes(), "did not ask for the points"),
        (start, blob, "did not ask for the points"),
        (digest, blob, "did not ask for the points"),
        (state, blob[:-8], "not 15 losses"),
        (other, blob, "another optimiser"),
        ({**state, "cobyla": {}}, blob, "malformed"),
    ]:
        with pytest.raises(RunDirectoryError, match=match):
            make().restore(bad_state, bad_blob)
    fresh = make()
    fresh.restore(state, blob)  # the untouched one still restores
    fresh.close()


def test_a_non_finite_loss_in_stage_two_is_logged_and_the_run_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    opt = make()
    drive(opt, 45)
    candidate = opt.ask()
    opt.tell(candidate, np.array([np.nan]))
    assert "non-finite loss" in caplog.text
    drive(opt, 70, 46)
    assert opt.generation == 42 and np.isfinite(opt.best_loss)
    state, blob = opt.checkpoint()
    again = make()
    again.restore(json.loads(json.dumps(state)), blob)  # NaN travels in the losses file, not the JSON
    assert again.checkpoint() == (state, blob)


def test_bounds_clip_what_is_scored() -> None:
    opt = make(bounds=(-0.05, 0.05))
    seen = drive(opt, 70)
    assert all(np.abs(p).max() <= 0.05 for p, _ in seen)
    assert np.abs(opt.best_z).max() <= 0.05


def test_a_dropped_or_closed_optimiser_ends_its_thread() -> None:
    opt = make()
    drive(opt, 40)
    opt.ask()  # COBYLA waits for this candidate's loss
    assert opt._run is not None
    thread = opt._run._thread
    assert thread.is_alive()
    del opt
    gc.collect()
    thread.join(timeout=120)
    assert not thread.is_alive()

    opt = make()
    drive(opt, 40)
    opt.ask()
    assert opt._run is not None
    thread = opt._run._thread
    opt.close()
    assert not thread.is_alive()
    opt.close()  # twice is fine


def test_tune_config_choices() -> None:
    cfg = tune_config("cpu", "bbt-cobyla")
    assert (cfg.method, cfg.optimizer, cfg.cma_fraction) == ("bbt", "cma-cobyla", 0.5)
    assert isinstance(shallow_optimizer(cfg), CMACobyla)
    assert tune_config("cpu", "bbt").optimizer == "cma-es"
    assert TuneConfig(optimizer="two-stage").optimizer == "cma-cobyla"
    assert "bbt-cobyla" in METHOD_PRESETS
    with pytest.raises(ConfigError, match="--optimizer cma-cobyla is for --method bbt"):
        tune_config("cpu", "bbtv2", optimizer="cma-cobyla")
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="--cma-fraction"):
            TuneConfig(optimizer="cma-cobyla", cma_fraction=bad)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        TuneConfig(optimizer="nelder-mead")
    # a run directory written before these settings existed loads with the defaults
    old = RunConfig(TuneConfig()).to_dict()
    del old["tune"]["optimizer"], old["tune"]["cma_fraction"]
    assert RunConfig.from_dict(old).tune == TuneConfig()


# -- through the tuner, on the tiny causal model ---------------------------------------------------

CFG = TuneConfig(prompt_length=2, intrinsic_dim=6, popsize=4, budget=38, k_shot=4, eval_every=8, seed=5,
                 optimizer="cma-cobyla", cma_fraction=0.5)
STAGE1 = 4  # generations of 4 calls (16 of the 38); then 22 of one call each
GENERATIONS = STAGE1 + 22


@pytest.fixture
def task(tmp_path: Path) -> Task:
    return sentiment_task(tmp_path)


def tuner(task: Task, backend: LocalBackend, run_dir: Path, config: TuneConfig = CFG) -> BlackBoxTuner:
    return BlackBoxTuner(task, backend, config, run_dir=run_dir)


async def test_the_budget_is_charged_exactly_and_a_seed_repeats(
        task: Task, llama_backend: LocalBackend, tmp_path: Path) -> None:
    result = await tuner(task, llama_backend, tmp_path / "a").fit()
    assert result.calls == CFG.budget == result.ledger["calls"]
    rows = history(tmp_path / "a")
    assert [r["calls"] for r in rows] == [4 * g for g in range(1, STAGE1 + 1)] + list(range(17, 39))
    doc = checkpoint_doc(tmp_path / "a")
    assert doc["optimizer"]["state"]["stage"] == 2 and doc["optimizer"]["state"]["cobyla"]["told"] == 22
    await tuner(task, llama_backend, tmp_path / "b").fit()
    assert_same_outcome(tmp_path / "b", tmp_path / "a")
    assert cobyla_threads() == []  # the fit closed its optimiser

    # the whole budget to CMA-ES: its 9 generations, then the 2 calls left to COBYLA (no partial generation)
    whole = CFG.with_overrides(cma_fraction=1.0)
    result = await tuner(task, llama_backend, tmp_path / "c", whole).fit()
    assert result.calls == 38
    assert [r["calls"] for r in history(tmp_path / "c")] == [4 * g for g in range(1, 10)] + [37, 38]


async def test_stopped_in_either_stage_then_resumed_equals_uninterrupted(
        task: Task, llama_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = tmp_path / "want"
    await tuner(task, llama_backend, want).fit()
    run_dir = tmp_path / "stopped"
    stops = [(2, "history", "crash"), (STAGE1 + 1, "optimizer", "crash"), (STAGE1 + 9, "history", "cancel")]
    for i, (generation, stage, how) in enumerate(stops):
        def hook(at: str, gen: int, generation: int = generation, stage: str = stage, how: str = how) -> None:
            if (at, gen) == (stage, generation):
                if how == "cancel":  # lands in the next generation's scoring, with COBYLA's candidate asked
                    current = asyncio.current_task()
                    assert current is not None
                    current.cancel()
                else:
                    raise Crash(f"{at} {gen}")

        pause_points.install(hook, monkeypatch.setattr)
        with pytest.raises(asyncio.CancelledError if how == "cancel" else Crash):
            await tuner(task, llama_backend, run_dir).fit(resume=i > 0)
        committed = generation if how == "cancel" else generation - 1
        doc = checkpoint_doc(run_dir)
        assert doc["generation"] == committed
        assert doc["optimizer"]["state"]["stage"] == (1 if committed < STAGE1 else 2)
        assert cobyla_threads() == []
    monkeypatch.undo()
    result = await tuner(task, llama_backend, run_dir).fit(resume=True)
    assert result.calls == CFG.budget
    assert_same_outcome(run_dir, want)
    assert len(history(run_dir)) == GENERATIONS


async def test_a_run_whose_stage_two_state_was_changed_does_not_resume(
        task: Task, llama_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"

    def hook(at: str, gen: int) -> None:
        if (at, gen) == ("history", STAGE1 + 6):
            raise Crash

    pause_points.install(hook, monkeypatch.setattr)
    with pytest.raises(Crash):
        await tuner(task, llama_backend, run_dir).fit()
    monkeypatch.undo()
    path = run_dir / "checkpoint.json"
    doc = json.loads(path.read_text("utf-8"))
    assert doc["optimizer"]["state"]["cobyla"]["told"] == 5
    doc["optimizer"]["state"]["cobyla"]["start"][1] += 0.25
    path.write_text(json.dumps(doc), "utf-8")
    with pytest.raises(RunDirectoryError, match="did not ask for the points"):
        await tuner(task, llama_backend, run_dir).fit(resume=True)
    assert cobyla_threads() == []


def test_the_cli_takes_the_optimizer_and_a_resume_keeps_it(llama_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmaas_tune.cli import app

    args = sentiment_fit_args(tmp_path, llama_dir)
    run_dir = tmp_path / "run"
    runner = CliRunner()
    done = runner.invoke(app, ["fit", *args, "--method", "bbt-cobyla", "--cma-fraction", "0.4", "-o", str(run_dir)])
    assert done.exit_code == 0, done.output
    stored = RunConfig.read(run_dir).tune
    assert (stored.optimizer, stored.cma_fraction) == ("cma-cobyla", 0.4)
    assert [r["calls"] for r in history(run_dir)] == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    refused = runner.invoke(app, ["fit", "--resume", str(run_dir), "--optimizer", "cma-es"])
    assert refused.exit_code == 2 and "--optimizer cma-es (the run has cma-cobyla)" in refused.output
