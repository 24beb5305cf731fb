"""Killing and interrupting the installed ``lmaas-tune`` process, then resuming it.

Every run here is compared with one uninterrupted run of the same command and seed (made in
this process through CliRunner): the resumed run must end with exactly its result, best prompt,
history and ledger. The kill points come from tests/pause_points.py
(``LMAAS_TUNE_TEST_PAUSE``, which makes the process stop and wait at a named point) or from
a progress line on stderr; no test depends on timing.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pause_points
import pytest
from remote_support import sentiment_task
from resume_support import CliProcess, assert_same_outcome, checkpoint_doc, history
from typer.testing import CliRunner

from lmaas_tune.cli import app

runner = CliRunner()
GENERATIONS = 10


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> list[str]:
    data = tmp_path_factory.mktemp("data")
    sentiment_task(data)
    return ["fit", "--task", "custom", "--template", "{sentence} . It was {mask}", "--label-words", "bad,great",
            "--train-file", str(data / "train.tsv"), "--test-file", str(data / "test.tsv"),
            "--model", str(llama_dir), "--device", "cpu", "--budget", "38", "--popsize", "4", "--prompt-length", "2",
            "--intrinsic-dim", "6", "--k-shot", "4", "--eval-every", "8", "--seed", "5"]


@pytest.fixture(scope="module")
def reference(command: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    res = runner.invoke(app, [*command, "--output", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    return run_dir, json.loads(res.stdout)


def _gen_line(n: int) -> str:
    return f"gen {n:>4}  calls"


def _resume_in_process(run_dir: Path, reference: tuple[Path, dict[str, object]]) -> None:
    res = runner.invoke(app, ["fit", "--resume", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    want = reference[1]
    assert {k: got[k] for k in ("dev", "test", "manual_prompt_test", "calls")} == \
           {k: want[k] for k in ("dev", "test", "manual_prompt_test", "calls")}
    assert_same_outcome(run_dir, reference[0])


def test_sigkill_at_several_points_then_resume_gives_the_uninterrupted_result(
        command: list[str], reference: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"

    # 1. killed while writing a checkpoint: the new checkpoint.json is on disk, not yet renamed into place
    p = CliProcess([*command, "--output", str(run_dir)], LMAAS_TUNE_TEST_PAUSE="3:commit")
    p.wait_for("LMAAS_TUNE_TEST_PAUSED commit 3")
    p.signal(signal.SIGKILL)
    assert p.finish()[0] == -signal.SIGKILL
    assert checkpoint_doc(run_dir)["generation"] == 2 and len(history(run_dir)) == 3
    assert any(f.name.startswith(".checkpoint.json.") for f in run_dir.iterdir())  # the torn write

    # 2. killed anywhere: right after a generation's progress line
    p = CliProcess(["fit", "--resume", str(run_dir)])
    p.wait_for(_gen_line(6))
    p.signal(signal.SIGKILL)
    assert p.finish()[0] == -signal.SIGKILL
    assert checkpoint_doc(run_dir)["generation"] >= 6

    # 3. killed after the last generation, before the final test evaluation
    p = CliProcess(["fit", "--resume", str(run_dir)], LMAAS_TUNE_TEST_PAUSE=f"{GENERATIONS}:evaluate")
    p.wait_for(f"LMAAS_TUNE_TEST_PAUSED evaluate {GENERATIONS}")
    p.signal(signal.SIGKILL)
    assert p.finish()[0] == -signal.SIGKILL
    assert checkpoint_doc(run_dir)["generation"] == GENERATIONS and not (run_dir / "result.json").exists()

    _resume_in_process(run_dir, reference)
    assert [f.name for f in run_dir.iterdir() if f.name.startswith(".")] == []


def test_sigint_stops_cleanly_with_a_resume_hint_and_resume_gives_the_same_result(
        command: list[str], reference: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    err = _stop_with_hint(command, run_dir, signal.SIGINT, after_generation=3, exit_code=130)
    assert "Traceback" not in err
    # consistent: the history ends at the committed generation, best.json is the checkpoint's best, nothing torn
    doc = checkpoint_doc(run_dir)
    assert doc["status"] == "interrupted" and doc["generation"] >= 3
    assert [h["generation"] for h in history(run_dir)] == list(range(1, doc["generation"] + 1))
    assert json.loads((run_dir / "best.json").read_text())["z"] == doc["loop"]["best"]["z"]
    assert not (run_dir / "result.json").exists()
    assert [f.name for f in run_dir.iterdir() if f.name.startswith(".")] == []
    _resume_in_process(run_dir, reference)


def test_sigterm_exits_143_with_the_hint(command: list[str], reference: tuple[Path, dict[str, object]],
                                         tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _stop_with_hint(command, run_dir, signal.SIGTERM, after_generation=2, exit_code=143)
    _resume_in_process(run_dir, reference)


def _stop_with_hint(command: list[str], run_dir: Path, sig: signal.Signals, *, after_generation: int,
                    exit_code: int) -> str:
    """Send ``sig`` to a fit once it printed ``after_generation``; check the exit code and resume hint."""
    p = CliProcess([*command, "--output", str(run_dir)])
    p.wait_for(_gen_line(after_generation))
    p.signal(sig)
    code, _, err = p.finish()
    assert code == exit_code, err
    assert f"interrupted by {sig.name}" in err and f"lmaas-tune fit --resume {run_dir}" in err
    return err


def test_resume_refuses_options_that_change_the_result(reference: tuple[Path, dict[str, object]]) -> None:
    run_dir = reference[0]
    res = runner.invoke(app, ["fit", "--resume", str(run_dir), "--budget", "80", "--seed", "6", "--template", "{sentence} {mask}"])
    assert res.exit_code == 2
    assert "--budget 80 (the run has 38)" in res.output and "--seed 6 (the run has 5)" in res.output
    assert "--template" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["fit", "--resume", str(run_dir), "--preset", "cpu"])
    assert res.exit_code == 2 and "--preset" in res.output
    # options that do not change the result are fine; a finished run just shows its result
    res = runner.invoke(app, ["fit", "--resume", str(run_dir), "--device", "cpu", "--concurrency", "3", "--seed", "5",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["test"] == reference[1]["test"]
    res = runner.invoke(app, ["fit", "--resume", str(run_dir.parent / "nothing-here")])
    assert res.exit_code == 2 and "not a run directory" in res.output


class _Crash(BaseException):
    """Stands in for the process dying (BaseException: nothing may swallow it)."""


def _stopped_run(command: list[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch, generation: int = 4) -> None:
    """A run stopped after ``generation``'s history line, made in this process."""
    def crash(stage: str, gen: int) -> None:
        if (stage, gen) == ("history", generation):
            raise _Crash

    pause_points.install(crash, monkeypatch.setattr)
    with pytest.raises(_Crash):
        runner.invoke(app, [*command, "--output", str(run_dir)])
    monkeypatch.undo()


def test_resume_command_takes_only_what_cannot_change_the_result(
        command: list[str], reference: tuple[Path, dict[str, object]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    _stopped_run(command, run_dir, monkeypatch)
    res = runner.invoke(app, ["resume", str(run_dir), "--budget", "80"])
    assert res.exit_code == 2 and "No such option" in res.output and "--budget" in res.output
    res = runner.invoke(app, ["resume", str(run_dir), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    got, want = json.loads(res.stdout), reference[1]
    assert {k: got[k] for k in ("dev", "test", "manual_prompt_test", "calls")} == \
           {k: want[k] for k in ("dev", "test", "manual_prompt_test", "calls")}
    assert got["ledger"]["eval_calls"] == 2  # the tuned and the manual prompt on the test set, uncharged
    assert_same_outcome(run_dir, reference[0])


def test_fit_resume_opens_the_record_once(command: list[str], reference: tuple[Path, dict[str, object]],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmaas_tune.runs.record import RunConfig

    run_dir = tmp_path / "run"
    _stopped_run(command, run_dir, monkeypatch)
    reads: list[Path] = []
    read = RunConfig.read.__func__  # type: ignore[attr-defined]

    def counted(cls: type[RunConfig], directory: Path) -> RunConfig:
        reads.append(directory)
        return read(cls, directory)

    monkeypatch.setattr(RunConfig, "read", classmethod(counted))
    res = runner.invoke(app, ["fit", "--resume", str(run_dir), "--seed", "5", "--json"])
    assert res.exit_code == 0, res.output
    assert reads == [run_dir]
    assert json.loads(res.stdout)["test"] == reference[1]["test"]
