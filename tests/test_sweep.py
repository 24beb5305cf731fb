"""Sweeps on a real local Ray (one instance for the module, 2 CPUs): the table matches the trials'
run directories, a SIGKILLed worker is retried and ends as the uninterrupted trial, a killed driver
resumes with only the unfinished trials, a failing trial is reported while the others finish, and
MLflow (a real file store) holds what the run directories hold."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the sweep tests need the ray extra (pip install 'lmaas-tune[ray]')")

from typer.testing import CliRunner  # noqa: E402

import lmaas_tune  # noqa: E402
from lmaas_tune.backends.factory import BackendSettings  # noqa: E402
from lmaas_tune.cli import app  # noqa: E402
from lmaas_tune.sweeps import SweepDirectory, SweepTable, read_sweep  # noqa: E402
from lmaas_tune.tasks.spec import TaskSpec  # noqa: E402

from remote_support import ThreadedServer, sentiment_task  # noqa: E402
from resume_support import assert_same_outcome  # noqa: E402
from sweep_support import CONTROL, wait_for  # noqa: E402

TESTS = Path(__file__).parent
TUNE = {"budget": 40, "popsize": 4, "prompt_length": 2, "intrinsic_dim": 8, "k_shot": 4, "eval_every": 8}
CLI_TUNE = ["--budget", "40", "--popsize", "4", "--prompt-length", "2", "--intrinsic-dim", "8", "--k-shot", "4",
            "--eval-every", "8"]
runner = CliRunner()


@pytest.fixture(scope="module")
def pause_control(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pause") / "control.json"


@pytest.fixture(scope="module")
def ray_address(pause_control: Path) -> Any:
    """One local Ray for the module; its workers can pause a trial (sweep_support.install_pause)."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", CONTROL)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), saved["PYTHONPATH"]) if p)
    os.environ[CONTROL] = str(pause_control)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "sweep_support.install_pause"})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def backend(llama_dir: Path) -> BackendSettings:
    return BackendSettings(model=str(llama_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def task_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small sentiment tasks (their own templates and label words) over the same 16 sentences."""
    data = tmp_path_factory.mktemp("tasks")
    sentiment_task(data)
    files = []
    for name, template, words in (("moviea", "{sentence} . It was {mask}", "bad,great"),
                                  ("movieb", "{sentence} . It is {mask}", "terrible,good")):
        (data / f"{name}.toml").write_text(f'name = "{name}"\ntemplate = "{template}"\nlabel_words = "{words}"\n'
                                           f'train = "train.tsv"\ntest = "test.tsv"\n', "utf-8")
        files.append(data / f"{name}.toml")
    return files


@pytest.fixture(scope="module")
def first(ray_address: str, backend: BackendSettings, task_files: list[Path],
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SweepTable, Path]:
    """2 tasks x 2 seeds through the library, logged to a real MLflow file store."""
    out = tmp_path_factory.mktemp("first") / "sweep"
    mlruns = out.parent / "mlruns"
    tasks = [TaskSpec.from_file(f) for f in task_files]
    trials = lmaas_tune.grid(tasks, seeds=[42, 43], backend=backend, **TUNE)
    table = lmaas_tune.sweep(trials, out, mlflow=str(mlruns))
    return out, table, mlruns


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8"))


def _attempts(out: Path, trial: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "attempts" / f"{trial}.jsonl").read_text("utf-8").splitlines()]


def test_a_two_by_two_sweep_finishes_and_its_table_is_its_run_directories(first: tuple[Path, SweepTable, Path]) -> None:
    out, table, _ = first
    ids = ["moviea-bbt-s42", "moviea-bbt-s43", "movieb-bbt-s42", "movieb-bbt-s43"]
    assert [t.id for t in table.trials] == ids
    assert all(t.status == "finished" and t.attempts == 1 for t in table.trials), table.trials
    assert table == read_sweep(out)  # the same table read back from the files alone
    results = {i: _json(out / "trials" / i / "result.json") for i in ids}
    for t in table.trials:
        r = results[t.id]
        assert (t.test, t.manual_test, t.dev, t.calls) == (r["test"]["value"], r["manual_prompt_test"]["value"],
                                                             r["dev"], r["calls"])
        assert t.calls == 40
        assert t.node_id and t.host and t.pid  # where it ran
        assert _json(out / "trials" / t.id / "config.json")["tune"]["seed"] == t.seed
    assert [(r.task, r.method, r.seeds, r.finished) for r in table.rows] == \
        [("moviea", "bbt", (42, 43), 2), ("movieb", "bbt", (42, 43), 2)]
    for row in table.rows:
        tests = [results[f"{row.task}-bbt-s{s}"]["test"]["value"] for s in row.seeds]
        manual = [results[f"{row.task}-bbt-s{s}"]["manual_prompt_test"]["value"] for s in row.seeds]
        assert row.test_mean == pytest.approx(statistics.fmean(tests))
        assert row.test_std == pytest.approx(statistics.stdev(tests))
        assert row.manual_mean == pytest.approx(statistics.fmean(manual))
        assert row.calls_mean == 40


def test_report_prints_the_sweep_again_in_every_format_and_plots_every_trial(
        first: tuple[Path, SweepTable, Path], tmp_path: Path) -> None:
    out, table, _ = first
    res = runner.invoke(app, ["report", str(out), "--format", "json", "-o", str(tmp_path / "curves.png")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(table.to_json())
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["report", str(out), "--format", "csv", "--no-plot"])
    lines = res.stdout.strip().splitlines()
    assert res.exit_code == 0 and lines[0].startswith("task,method,variant,metric,seeds") and len(lines) == 3
    assert lines[1].startswith("moviea,bbt,,accuracy,42 43,2,0,")
    res = runner.invoke(app, ["report", str(out), "--format", "markdown", "--no-plot"])
    assert res.exit_code == 0 and "| moviea | bbt | accuracy |" in res.stdout
    mean, std = table.rows[0].test_mean, table.rows[0].test_std
    assert mean is not None and std is not None and f"{100 * mean:.2f} ± {100 * std:.2f}" in res.stdout


def test_mlflow_holds_each_trial_with_its_settings_history_result_and_files(first: tuple[Path, SweepTable, Path]) -> None:
    mlflow = pytest.importorskip("mlflow")
    out, table, mlruns = first
    client = mlflow.MlflowClient(tracking_uri=mlruns.resolve().as_uri())
    experiment = client.get_experiment_by_name(f"lmaas-tune sweep {out.resolve()}")
    runs = {r.data.tags["lmaas_tune.trial"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(t.id for t in table.trials)
    for t in table.trials:
        run, run_dir = runs[t.id], out / "trials" / t.id
        assert run.info.status == "FINISHED"
        assert run.data.params["task"] == t.task and run.data.params["seed"] == str(t.seed)
        assert run.data.params["tune.budget"] == "40" and run.data.params["method"] == "bbt"
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text("utf-8").splitlines()]
        logged = client.get_metric_history(run.info.run_id, "best_loss")
        assert [(m.step, m.value) for m in logged] == [(h["calls"], h["best_loss"]) for h in history]
        assert run.data.metrics["test"] == t.test and run.data.metrics["manual_test"] == t.manual_test
        files = {f.path for f in client.list_artifacts(run.info.run_id, "run")}
        assert {"run/result.json", "run/history.jsonl", "run/config.json", "run/best.json"} <= files


def test_a_killed_worker_is_retried_and_ends_as_the_uninterrupted_trial_while_a_failing_one_is_reported(
        first: tuple[Path, SweepTable, Path], backend: BackendSettings, task_files: list[Path], pause_control: Path,
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sentiment_task(data)
    (data / "test.tsv").write_text("sentence\tlabel\nfine\t7\n", "utf-8")  # a label the task does not have
    bad = TaskSpec("custom", "{sentence} . It was {mask}", ("bad", "great"), str(data / "train.tsv"),
                   str(data / "test.tsv"))
    trials = lmaas_tune.grid([TaskSpec.from_file(task_files[0]), bad], seeds=[42], backend=backend, **TUNE)
    marker = tmp_path / "paused.pid"
    pause_control.write_text(json.dumps({"trial": "moviea-bbt-s42", "generation": 3, "marker": str(marker)}), "utf-8")
    out = tmp_path / "sweep"
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(table=lmaas_tune.sweep(trials, out)))
    thread.start()
    try:
        wait_for(marker.exists, "the worker to pause after generation 3")
        pid = int(marker.read_text("utf-8"))
        os.kill(pid, signal.SIGKILL)
    finally:
        thread.join(timeout=300)
        pause_control.unlink()
    table: SweepTable = box["table"]
    good, failed = table.trials
    assert good.status == "finished" and good.attempts == 2 and good.pid != pid
    starts = [a for a in _attempts(out, good.id) if a["event"] == "start"]
    assert starts[0]["pid"] == pid and starts[1]["attempt"] == 2
    assert_same_outcome(out / "trials" / good.id, first[0] / "trials" / good.id)
    assert _json(out / "trials" / good.id / "checkpoint.json")["discarded"] != {}  # continued from a checkpoint
    assert failed.status == "failed" and failed.attempts == 1
    assert failed.error is not None and "\n" not in failed.error and "DataError" in failed.error
    assert "7" in failed.error  # names the label the task does not have


def test_a_killed_driver_resumes_running_only_the_unfinished_trials(
        first: tuple[Path, SweepTable, Path], ray_address: str, llama_dir: Path, task_files: list[Path],
        tmp_path: Path) -> None:
    out, grid = tmp_path / "sweep", tmp_path / "grid.toml"
    grid.write_text(f"[grid]\ntask_file = {json.dumps([str(f) for f in task_files])}\n", "utf-8")
    cmd = [sys.executable, "-m", "lmaas_tune", "sweep", "--grid", str(grid), "--seeds", "42,43", "--model",
           str(llama_dir), "--device", "cpu", "--dtype", "float32", *CLI_TUNE, "-o", str(out), "--address", ray_address,
           "--max-concurrent", "1", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: driver.poll() is not None or any((out / "trials").glob("*/result.json")),
                 "the first trial to finish")
        assert driver.poll() is None, driver.communicate()[1]
    finally:
        driver.kill()
        driver.wait()
    done_before = {p.parent.name for p in (out / "trials").glob("*/result.json")}
    assert 1 <= len(done_before) < 4
    res = runner.invoke(app, ["sweep", "--resume", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    table = json.loads(res.stdout)
    assert [t["status"] for t in table["trials"]] == ["finished"] * 4
    for t in table["trials"]:
        sessions = {a["session"] for a in _attempts(out, t["id"]) if a["event"] == "start"}
        if t["id"] in done_before:
            assert len(sessions) == 1 and t["attempts"] == 1  # not run again
        assert_same_outcome(out / "trials" / t["id"], first[0] / "trials" / t["id"])
    res = runner.invoke(app, ["sweep", "--resume", str(out), "--budget", "80"])
    assert res.exit_code == 2 and "--budget" in res.output


def test_trials_share_one_service_and_end_as_the_local_trials(
        first: tuple[Path, SweepTable, Path], llama_backend: Any, task_files: list[Path], tmp_path: Path) -> None:
    with ThreadedServer(llama_backend) as server:  # in this process; every trial's worker is its client
        remote = BackendSettings(backend="remote", endpoints=(server.url,))
        trials = lmaas_tune.grid([TaskSpec.from_file(f) for f in task_files], seeds=[42], backend=remote, **TUNE)
        table = lmaas_tune.sweep(trials, tmp_path / "sweep")
    assert [(t.status, t.calls) for t in table.trials] == [("finished", 40), ("finished", 40)]
    for t in table.trials:
        got, want = tmp_path / "sweep" / "trials" / t.id, first[0] / "trials" / t.id
        assert _json(got / "config.json")["backend"]["endpoints"] == [server.url]
        assert _json(got / "result.json")["ledger"]["bytes_up"] > 0  # scored over HTTP
        np.testing.assert_allclose(_json(got / "best.json")["z"], _json(want / "best.json")["z"], atol=1e-6)
        assert _json(got / "result.json")["test"] == _json(want / "result.json")["test"]


def test_a_resumed_sweep_may_find_its_service_elsewhere(
        first: tuple[Path, SweepTable, Path], llama_backend: Any, task_files: list[Path], tmp_path: Path) -> None:
    gone = BackendSettings(backend="remote", endpoints=("http://127.0.0.1:9",))  # where the service was
    trials = lmaas_tune.grid([TaskSpec.from_file(task_files[0])], seeds=[42], backend=gone, **TUNE)
    SweepDirectory.create(tmp_path / "sweep", trials)  # a sweep stopped before its trial started
    with ThreadedServer(llama_backend) as server:
        table = lmaas_tune.resume_sweep(tmp_path / "sweep", endpoints=[server.url])
    (trial,) = table.trials
    assert (trial.status, trial.calls) == ("finished", 40)
    got, want = tmp_path / "sweep" / "trials" / trial.id, first[0] / "trials" / trial.id
    assert _json(got / "result.json")["test"] == _json(want / "result.json")["test"]
    res = runner.invoke(app, ["sweep", "--resume", str(tmp_path / "sweep"), "--device", "cpu"])
    assert res.exit_code == 2 and "every trial uses a service" in res.output


@pytest.mark.parametrize(("missing", "extra_args"), [("ray", []), ("mlflow", ["--mlflow"])])
def test_sweep_without_an_extra_says_which_to_install(missing: str, extra_args: list[str], tmp_path: Path) -> None:
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            "from typer.testing import CliRunner\nfrom lmaas_tune.cli import app\n"
            f"r = CliRunner().invoke(app, ['sweep', '--tasks', 'sst2', '-o', {str(tmp_path / 's')!r}, *{extra_args!r}])\n"
            "print(r.exit_code); print(r.output)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "2", res.stdout + res.stderr
    assert f"pip install 'lmaas-tune[{missing}]'" in res.stdout and len([ln for ln in lines[1:] if ln.strip()]) == 1
    assert not (tmp_path / "s").exists()  # nothing written before the check
