"""The sweep's grid from the command line and a TOML file, without running anything (--dry-run):
trial ids, composition as `fit` composes its options, the paper-table preset, and the refusals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmaas_tune.cli import app
from lmaas_tune.cli.options import BackendOptions, TaskOptions, TuningOptions
from lmaas_tune.cli.sweep import build_trials
from lmaas_tune.errors import ConfigError, RunDirectoryError
from lmaas_tune.tasks.spec import TaskSpec
from lmaas_tune.sweeps import SweepDirectory, expand, grid, trial_id

runner = CliRunner()


def _ids(args: list[str]) -> list[str]:
    res = runner.invoke(app, ["sweep", *args, "--dry-run"])
    assert res.exit_code == 0, res.output
    return [line.split()[0] for line in res.stdout.splitlines()]


def test_options_make_one_trial_per_point_with_stable_ids() -> None:
    assert _ids(["--tasks", "sst2,agnews", "--seeds", "42,43", "--methods", "bbt,bbtv2", "--preset", "cpu"]) == [
        f"{t}-{m}-s{s}" for t in ("sst2", "agnews") for m in ("bbt", "bbtv2") for s in (42, 43)]


def test_a_toml_grid_varies_any_fit_setting_and_options_apply_to_every_trial(tmp_path: Path) -> None:
    toml = tmp_path / "grid.toml"
    toml.write_text('[fit]\npreset = "cpu"\nbudget = 100\n[grid]\ntasks = ["sst2"]\nprompt-length = [5, 10]\n', "utf-8")
    res = runner.invoke(app, ["sweep", "--grid", str(toml), "--seeds", "7", "--popsize", "10", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [
        "sst2-bbt-s7-prompt_length5  sst2 bbt seed=7 L=5 d=500 popsize=10 budget=100",
        "sst2-bbt-s7-prompt_length10  sst2 bbt seed=7 L=10 d=500 popsize=10 budget=100"]


def test_a_trial_is_the_fit_its_options_describe() -> None:
    groups = {"task_opts": TaskOptions(), "backend_opts": BackendOptions(), "tuning": TuningOptions(preset="cpu")}
    (trial,) = build_trials(groups, {"task": ["agnews"], "method": ["bbtv2"], "seed": [3]}, True)
    fit_like = TuningOptions(preset="cpu", method="bbtv2", seed=3).config()
    assert trial.tune == fit_like and trial.task == TaskOptions(task="agnews").spec()
    assert trial.id == "agnews-bbtv2-s3" and trial.point == {"task": "agnews", "method": "bbtv2", "seed": 3}
    assert [t.id for t in grid(["sst2"], seeds=[1, 2], vary={"budget": [40, 80]}, popsize=4)] == [
        "sst2-bbt-s1-budget40", "sst2-bbt-s1-budget80", "sst2-bbt-s2-budget40", "sst2-bbt-s2-budget80"]
    assert trial_id(expand({"seed": [1], "task": ["x/y.toml"]})[0]) == "y-bbt-s1"
    custom = TaskSpec("custom", "{sentence} It was {mask}", ("bad", "great"), "a.tsv", "b.tsv")
    with pytest.raises(ConfigError, match="names task \\['custom'\\] more than once"):
        grid([custom, custom])


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="with datasets the hub tasks run")
def test_paper_table_is_the_papers_tasks_by_three_seeds_and_says_which_tasks_have_no_data() -> None:
    res = runner.invoke(app, ["sweep", "--preset", "paper-table", "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [f"{t}-bbt-s{s}" for t in ("sst2", "agnews", "rte")
                                                       for s in (42, 43, 44)]
    assert all("L=50 d=500 popsize=20 budget=8000" in line for line in lines)
    for task in ("yelpp", "dbpedia", "mrpc", "snli"):
        assert f"left out {task}: no shipped data" in res.stderr
        assert "pip install 'lmaas-tune[hub]'" in res.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["--seed", "1", "--seeds", "1,2"], "give --seed or a list of seeds"),
    (["--seeds", "1,x"], "comma-separated list of numbers"),
    (["--tasks", "sst3"], "unknown task 'sst3'"),
    (["--tasks", "sst2", "--budget", "3", "--popsize", "4"], "--budget (3) is smaller than --popsize (4)"),
    (["--format", "yaml"], "--format must be one of"),
])
def test_bad_grids_are_refused_with_one_line(args: list[str], says: str) -> None:
    res = runner.invoke(app, ["sweep", *args, "--dry-run"])
    assert res.exit_code == 2 and says in res.output, res.output


def test_a_grid_file_with_a_setting_fit_does_not_have_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "grid.toml"
    toml.write_text('[grid]\nlearning_rate = [1, 2]\n', "utf-8")
    res = runner.invoke(app, ["sweep", "--grid", str(toml), "--dry-run"])
    assert res.exit_code == 2 and "'learning_rate', which is no fit setting" in res.output


def test_an_address_where_nothing_listens_is_refused_at_once_and_nothing_is_written(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    res = runner.invoke(app, ["sweep", "--tasks", "sst2", "-o", str(tmp_path / "s"), "--address", "127.0.0.1:9"])
    assert res.exit_code == 2 and "could not join the Ray cluster at 127.0.0.1:9" in res.output, res.output
    assert not (tmp_path / "s").exists()


def test_a_sweep_directory_is_made_once(tmp_path: Path) -> None:
    trials = grid(["sst2"], seeds=[1])
    SweepDirectory.create(tmp_path / "s", trials)
    with pytest.raises(RunDirectoryError, match="already holds a sweep; continue it with `lmaas-tune sweep --resume"):
        SweepDirectory.create(tmp_path / "s", trials)
    assert SweepDirectory.open(tmp_path / "s").trials == trials
    with pytest.raises(RunDirectoryError, match="is not a sweep directory"):
        SweepDirectory.open(tmp_path)


def test_progress_off_a_terminal_is_a_plain_line_each_time_the_counts_change(capsys: pytest.CaptureFixture[str]) -> None:
    from lmaas_tune.cli.sweep import ProgressLine
    from lmaas_tune.sweeps import BestDev, SweepProgress

    seen = [SweepProgress(4, 0, 0, 2, 2, None), SweepProgress(4, 0, 0, 2, 2, None),
            SweepProgress(4, 1, 1, 2, 0, BestDev(0.75, "sst2-bbt-s42"))]
    with ProgressLine(quiet=False) as line:
        for p in seen:
            line(p)
    assert capsys.readouterr().err.splitlines() == [
        "trials: 0/4 done, 2 running, 2 queued, 0 failed",
        "trials: 1/4 done, 2 running, 0 queued, 1 failed; best dev 0.7500 (sst2-bbt-s42)"]
