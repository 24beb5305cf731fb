"""BBTv2 (deep BBT) through the one fit loop: schedule, budget, checkpoints and resume, remote = local."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from remote_support import served, sentiment_task
from resume_support import assert_same_outcome, checkpoint_doc, history

from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.remote.client import RemoteBackend
from lmaas_tune.methods import METHOD_PRESETS, PRESETS, TuneConfig, tune_config
from lmaas_tune.projection import DeepProjectionSpec
from lmaas_tune.errors import ConfigError
from lmaas_tune.methods.optimizers import LayerwiseCMAES
from lmaas_tune.tuning.tuner import BlackBoxTuner, GenerationReport

CFG = tune_config("paper", "bbtv2", prompt_length=2, intrinsic_dim=5, popsize=4, budget=24, k_shot=4, eval_every=8,
                  seed=11)


def test_method_presets_compose_with_size_presets() -> None:
    assert CFG.method == "bbtv2" and (CFG.sigma0, CFG.alpha) == (0.2, 0.2)
    cpu = tune_config("cpu", "bbt-icml")
    assert (cpu.prompt_length, cpu.budget) == (PRESETS.get("cpu").config.prompt_length, 400)
    assert (cpu.method, cpu.sigma0, cpu.bounds, cpu.distribution, cpu.loss) == ("bbt", 0.5, (-5.0, 5.0), "uniform", "hinge")
    assert tune_config("cpu", "bbtv2", sigma0=0.7).sigma0 == 0.7  # explicit settings win
    assert tune_config() == TuneConfig()  # the paper's BBT is the default
    assert set(METHOD_PRESETS) == {"bbt", "bbt-icml", "bbt-cobyla", "bbtv2"}
    assert TuneConfig.from_dict({k: v for k, v in TuneConfig().to_dict().items() if k != "method"}).method == "bbt"
    with pytest.raises(ConfigError, match="unknown method"):
        TuneConfig(method="bbt3")


def test_layerwise_schedule_freezes_the_other_layers_at_their_best() -> None:
    opt = LayerwiseCMAES(3, 4, popsize=5, sigma0=0.5, seed=1)
    rng = np.random.default_rng(0)
    for g in range(7):
        pop = opt.ask()
        layer = g % 3
        assert opt.active == layer and pop.shape == (5, 12)
        others = np.delete(pop, np.s_[layer * 4:(layer + 1) * 4], axis=1)
        np.testing.assert_array_equal(others, np.delete(np.tile(opt.best_z, (5, 1)), np.s_[layer * 4:(layer + 1) * 4], axis=1))
        losses = rng.random(5)
        best_before = opt.best_loss
        opt.tell(pop, losses)
        assert opt.best_loss == min(best_before, losses.min())
    # a checkpoint restores every layer's CMA-ES and the schedule exactly
    state, blob = opt.checkpoint()
    twin = LayerwiseCMAES(3, 4, popsize=5, sigma0=0.5, seed=1)
    twin.restore(json.loads(json.dumps(state)), blob)
    np.testing.assert_array_equal(twin.ask(), opt.ask())


async def _fit(task: Any, backend: Any, cfg: TuneConfig = CFG, **kw: Any) -> tuple[Any, list[GenerationReport]]:
    events: list[Any] = []
    result = await BlackBoxTuner(task, backend, cfg, callbacks=[events.append], **kw).fit()
    return result, [e for e in events if isinstance(e, GenerationReport)]


@pytest.mark.parametrize("budget", [24, 26])
async def test_rounds_charge_exactly_the_budget(llama_backend: LocalBackend, tmp_path: Path, budget: int) -> None:
    cfg = tune_config("paper", "bbtv2", prompt_length=2, intrinsic_dim=5, popsize=4, budget=budget, k_shot=4,
                      eval_every=8, seed=11)
    result, hist = await _fit(sentiment_task(tmp_path), llama_backend, cfg, evaluate_test=False)
    assert result.calls == budget == result.ledger["calls"]
    assert [h.calls for h in hist] == [min(4 * g, budget) for g in range(1, -(-budget // 4) + 1)]
    assert isinstance(result.projection, DeepProjectionSpec) and result.projection.layers == 2
    assert result.best_z.shape == (2 * 5,)


async def test_bbtv2_needs_a_deep_backend(masked_backend: LocalBackend, tmp_path: Path) -> None:
    from test_deep_backend import ShallowOnly

    with pytest.raises(ConfigError, match="deep"):
        await _fit(sentiment_task(tmp_path), ShallowOnly(masked_backend))


async def test_cancelled_v2_run_resumes_to_the_uninterrupted_result(masked_backend: LocalBackend, tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    whole = tmp_path / "whole"
    await BlackBoxTuner(task, masked_backend, CFG, run_dir=whole).fit()

    stopped = tmp_path / "stopped"

    def stop_at(event: Any) -> None:
        if isinstance(event, GenerationReport) and event.generation == 3:
            raise KeyboardInterrupt  # as Ctrl-C would, between generations

    with pytest.raises(KeyboardInterrupt):
        await BlackBoxTuner(task, masked_backend, CFG, run_dir=stopped, callbacks=[stop_at]).fit()
    doc = checkpoint_doc(stopped)
    assert doc["status"] == "interrupted" and doc["generation"] == 3 and doc["optimizer"]["state"]["generation"] == 3
    assert len(history(stopped)) == 3 and not (stopped / "result.json").exists()

    # and a cancelled task mid-generation (while the population is being scored)
    task_run = asyncio.ensure_future(BlackBoxTuner(task, masked_backend, CFG, run_dir=stopped).fit(resume=True))
    for _ in range(2000):
        if checkpoint_doc(stopped)["generation"] >= 4:
            break
        await asyncio.sleep(0.005)
    task_run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task_run
    assert checkpoint_doc(stopped)["status"] == "interrupted"

    result = await BlackBoxTuner(task, masked_backend, CFG, run_dir=stopped).fit(resume=True)
    assert_same_outcome(stopped, whole)
    assert result.calls == CFG.budget


async def test_remote_v2_fit_equals_local(llama_backend: LocalBackend, tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    local, local_hist = await _fit(task, llama_backend, concurrency=1)
    async with served(llama_backend) as server, RemoteBackend([server.url], upload="projection") as remote:
        remote_fit, remote_hist = await _fit(task, remote, concurrency=2)
    np.testing.assert_array_equal(remote_fit.best_z, local.best_z)
    assert (remote_fit.dev, remote_fit.calls, remote_fit.projection) == (local.dev, local.calls, local.projection)
    assert remote_fit.test is not None and local.test is not None
    assert remote_fit.test.predictions == local.test.predictions
    assert [h.dev_metric for h in remote_hist] == [h.dev_metric for h in local_hist]


def test_cli_v2_run_killed_mid_commit_resumes_to_the_uninterrupted_result(llama_dir: Path, tmp_path: Path) -> None:
    import signal

    from resume_support import CliProcess
    from typer.testing import CliRunner

    from lmaas_tune.cli import app

    runner = CliRunner()
    sentiment_task(tmp_path)
    command = ["fit", "--task", "custom", "--template", "{sentence} . It was {mask}", "--label-words", "bad,great",
               "--train-file", str(tmp_path / "train.tsv"), "--test-file", str(tmp_path / "test.tsv"),
               "--model", str(llama_dir), "--device", "cpu", "--method", "bbtv2", "--budget", "22", "--popsize", "4",
               "--prompt-length", "2", "--intrinsic-dim", "5", "--k-shot", "4", "--eval-every", "8", "--seed", "5",
               "--no-baseline"]
    whole = tmp_path / "whole"
    res = runner.invoke(app, [*command, "--output", str(whole), "--json"])
    assert res.exit_code == 0, res.output

    run_dir = tmp_path / "run"
    p = CliProcess([*command, "--output", str(run_dir)], LMAAS_TUNE_TEST_PAUSE="3:commit")
    p.wait_for("LMAAS_TUNE_TEST_PAUSED commit 3")
    p.signal(signal.SIGKILL)
    assert p.finish()[0] == -signal.SIGKILL
    assert checkpoint_doc(run_dir)["generation"] == 2
    refused = runner.invoke(app, ["fit", "--resume", str(run_dir), "--method", "bbt"])
    assert refused.exit_code == 2 and "--method" in refused.output
    res = runner.invoke(app, ["fit", "--resume", str(run_dir), "--method", "bbtv2", "--json"])
    assert res.exit_code == 0, res.output
    assert_same_outcome(run_dir, whole)
