"""Dev checks that also score the optimiser's centre (``dev_candidates="best+mean"``).

The centre itself: CMA-ES's mean (clipped to the bounds), the two-stage optimiser's in stage 1
and none in stage 2, none for BBTv2's layer-wise CMA-ES. Through the tuner on the tiny causal
model: the budget charged exactly with the centre's dev scoring uncharged (one more uncharged
candidate a check), the kept prompt either the best candidate or the centre, two runs with one
seed alike, a run crashed mid-way resumed to exactly the uninterrupted outcome, and the CLI
option recorded and kept on resume (a bad value: tests/test_errors_cli.py). No timings.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pause_points
import pytest
from remote_support import sentiment_fit_args, sentiment_task
from resume_support import Crash, assert_same_outcome, checkpoint_doc, history

from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.errors import ConfigError
from lmaas_tune.methods import TuneConfig
from lmaas_tune.methods.optimizers import CMAES, CMACobyla, LayerwiseCMAES
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.runs.results import FitResult
from lmaas_tune.tuning.tuner import BlackBoxTuner

pytestmark = pytest.mark.filterwarnings("ignore:Could not import matplotlib")

TARGET = np.linspace(-1.0, 1.0, 6)


def tell_quadratic(opt: CMAES | CMACobyla, generations: int) -> None:
    for _ in range(generations):
        population = opt.ask()
        opt.tell(population, ((population - TARGET) ** 2).sum(axis=1))


def test_the_centre_is_the_cma_es_mean_clipped_to_the_bounds() -> None:
    free = CMAES(6, popsize=4, sigma0=0.5, seed=3)
    assert np.array_equal(free.center(), np.zeros(6))  # z0 = 0 before any tell
    tell_quadratic(free, 5)
    assert np.array_equal(free.center(), np.asarray(free._es.mean))
    assert not np.array_equal(free.center(), np.zeros(6))

    bounded = CMAES(6, popsize=4, sigma0=0.5, seed=3, bounds=(-0.2, 0.2))
    tell_quadratic(bounded, 5)
    mean = np.asarray(bounded._es.mean)
    assert np.array_equal(bounded.center(), np.clip(mean, -0.2, 0.2))
    assert np.abs(bounded.center()).max() <= 0.2


def test_the_two_stage_optimiser_has_a_centre_only_in_stage_one() -> None:
    opt = CMACobyla(6, popsize=4, sigma0=0.5, seed=3, budget=24, cma_fraction=0.5)
    try:
        tell_quadratic(opt, 2)
        assert opt.cma is not None and np.array_equal(opt.center(), opt.cma.center())
        tell_quadratic(opt, 1)  # the third generation ends stage 1
        assert opt.cma is None and opt.center() is None
    finally:
        opt.close()
    assert LayerwiseCMAES(2, 3, popsize=4, sigma0=0.5, seed=3).center() is None


def test_the_setting_is_checked() -> None:
    assert TuneConfig().dev_candidates == "best"  # the paper's
    assert TuneConfig(dev_candidates="best+mean").to_dict()["dev_candidates"] == "best+mean"
    with pytest.raises(ConfigError, match="--dev-candidates must be one of best, best[+]mean; got 'mean'"):
        TuneConfig(dev_candidates="mean")


CFG = TuneConfig(prompt_length=2, intrinsic_dim=6, popsize=4, budget=40, k_shot=4, eval_every=8, seed=5,
                 dev_candidates="best+mean")
CHECKS = 5  # dev checks: at 8, 16, 24, 32 and 40 calls


Fit = Callable[..., Awaitable[FitResult]]


@pytest.fixture
def fit(llama_backend: LocalBackend, tmp_path: Path) -> Fit:
    """``await fit(name, config=CFG, resume=False)``: the sentiment task tuned into ``tmp_path / name``."""
    task = sentiment_task(tmp_path)

    def run(name: str, config: TuneConfig = CFG, resume: bool = False) -> Awaitable[FitResult]:
        return BlackBoxTuner(task, llama_backend, config, run_dir=tmp_path / name).fit(resume=resume)

    return run


async def test_the_budget_is_exact_and_the_centre_is_scored_on_dev_only(fit: Fit, tmp_path: Path) -> None:
    plain = await fit("plain", CFG.with_overrides(dev_candidates="best"))
    both = await fit("both")
    assert plain.calls == both.calls == CFG.budget == both.ledger["calls"]
    # the centre is one more candidate per dev check, never charged; the test scoring is the same
    assert both.ledger["uncharged_calls"] - plain.ledger["uncharged_calls"] == CHECKS
    # the same candidates were asked and told: the training history is the same
    drop = ("dev_metric", "best_dev")
    assert [{k: v for k, v in r.items() if k not in drop} for r in history(tmp_path / "both")] == \
        [{k: v for k, v in r.items() if k not in drop} for r in history(tmp_path / "plain")]
    assert both.dev >= plain.dev  # each check keeps the better of what "best" alone would score
    best = json.loads((tmp_path / "both" / "best.json").read_text("utf-8"))
    if best["train_loss"] is None:  # the centre was kept: never scored on train
        assert both.train_loss == np.inf
    else:
        assert best["train_loss"] == both.train_loss


async def test_a_kept_centre_is_stored_and_reloaded(fit: Fit, tmp_path: Path) -> None:
    """Over a few seeds some check keeps the centre; its record says the train loss is unknown."""
    for seed in range(1, 9):
        config = CFG.with_overrides(seed=seed)
        result = await fit(f"seed{seed}", config)
        if json.loads((tmp_path / f"seed{seed}" / "best.json").read_text("utf-8"))["train_loss"] is None:
            break
    else:
        pytest.fail("no seed of 1..8 kept the centre")
    assert result.train_loss == np.inf
    assert json.loads((tmp_path / f"seed{seed}" / "result.json").read_text("utf-8"))["train_loss"] is None
    again = await fit(f"seed{seed}", config, resume=True)  # a finished run returns what it stored
    assert again.train_loss == np.inf and np.array_equal(again.best_z, result.best_z)


async def test_a_seed_repeats_and_a_crashed_run_resumes_to_the_same_outcome(
        fit: Fit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await fit("want")
    await fit("again")
    assert_same_outcome(tmp_path / "again", tmp_path / "want")

    def hook(at: str, gen: int) -> None:
        if (at, gen) == ("history", 5):  # after the check at 16 calls, before the one at 24
            raise Crash

    pause_points.install(hook, monkeypatch.setattr)
    with pytest.raises(Crash):
        await fit("stopped")
    monkeypatch.undo()
    assert checkpoint_doc(tmp_path / "stopped")["generation"] == 4
    result = await fit("stopped", resume=True)
    assert result.calls == CFG.budget
    assert_same_outcome(tmp_path / "stopped", tmp_path / "want")


def test_the_cli_takes_the_option_and_a_resume_keeps_it(llama_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmaas_tune.cli import app

    args = sentiment_fit_args(tmp_path, llama_dir)
    run_dir = tmp_path / "run"
    runner = CliRunner()
    loud = [a for a in args if a != "--quiet"]
    done = runner.invoke(app, ["fit", *loud, "--dev-candidates", "best+mean", "-o", str(run_dir)])
    assert done.exit_code == 0, done.output
    assert "dev checks also score CMA-ES's mean" in " ".join(done.output.split())
    assert RunConfig.read(run_dir).tune.dev_candidates == "best+mean"
    refused = runner.invoke(app, ["fit", "--resume", str(run_dir), "--dev-candidates", "best"])
    assert refused.exit_code == 2 and "--dev-candidates best (the run has best+mean)" in refused.output
