"""Checkpoints and resume in the library, on the tiny causal transformer.

A run is stopped at every point the checkpoint rule names (after the history line, after the
optimiser file, between writing and renaming checkpoint.json, mid-generation by cancellation,
before the final evaluation), resumed each time, and must end with exactly the result of an
uninterrupted run with the same seed. Stops are injected at the named points of tests/pause_points.py (here
raising or cancelling in-process; tests/test_resume_cli.py kills a real process instead).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pause_points
import pytest
from remote_support import sentiment_task
from resume_support import Crash, assert_same_outcome, checkpoint_doc, history

from lmaas_tune.tuning import workflows
from lmaas_tune.backends.factory import BackendSettings
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.runs.checkpoint import load_checkpoint
from lmaas_tune.methods import TuneConfig
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.errors import ConfigError, RunDirectoryError
from lmaas_tune.methods.optimizers import CMAES
from lmaas_tune.runs.directory import RunDirectory
from lmaas_tune.tasks.spec import TaskSpec
from lmaas_tune.tasks.task import Task
from lmaas_tune.tuning.tuner import BlackBoxTuner, GenerationReport

pytestmark = pytest.mark.filterwarnings("ignore:Could not import matplotlib")

CFG = TuneConfig(prompt_length=2, intrinsic_dim=6, popsize=4, budget=38, k_shot=4, eval_every=8, seed=5)
GENERATIONS = 10  # 9 of 4 calls and a last one of 2


def stop_at(monkeypatch: pytest.MonkeyPatch, generation: int, stage: str, how: str = "crash") -> None:
    def hook(at: str, gen: int) -> None:
        if (at, gen) == (stage, generation):
            if how == "cancel":  # lands at the next await: the middle of the next generation
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
            else:
                raise Crash(f"{at} {gen}")

    pause_points.install(hook, monkeypatch.setattr)


def tuner(task: Task, backend: LocalBackend, run_dir: Path) -> BlackBoxTuner:
    return BlackBoxTuner(task, backend, CFG, run_dir=run_dir, evaluate_manual=True)


@pytest.fixture
def task(tmp_path: Path) -> Task:
    return sentiment_task(tmp_path)


async def _reference(task: Task, backend: LocalBackend, run_dir: Path) -> Path:
    await tuner(task, backend, run_dir).fit()
    return run_dir


STOPS = [(3, "history", "crash"), (4, "optimizer", "crash"), (6, "commit", "crash"), (7, "history", "cancel"),
         (GENERATIONS, "evaluate", "crash")]


async def test_stopped_everywhere_then_resumed_equals_uninterrupted(
        task: Task, llama_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = await _reference(task, llama_backend, tmp_path / "reference")
    run_dir = tmp_path / "stopped"
    for i, (generation, stage, how) in enumerate(STOPS):
        stop_at(monkeypatch, generation, stage, how)
        with pytest.raises(asyncio.CancelledError if how == "cancel" else Crash):
            await tuner(task, llama_backend, run_dir).fit(resume=i > 0)
        doc = checkpoint_doc(run_dir)
        committed = generation - 1 if how == "crash" and stage != "evaluate" else generation
        assert doc["generation"] == committed, (generation, stage)
        assert not (run_dir / "result.json").exists()
        if how == "cancel":  # a clean stop marks the checkpoint and counts what it threw away
            assert doc["status"] == "interrupted" and doc["stopped_by"] == "cancelled"
            assert doc["discarded"]["attempts"] >= 1
            assert len(history(run_dir)) == committed
        if i == 1:  # and a torn history line on top of it, as a crash mid-append leaves
            with (run_dir / "history.jsonl").open("a") as fh:
                fh.write('{"generation": 99, "lo')
    monkeypatch.undo()
    result = await tuner(task, llama_backend, run_dir).fit(resume=True)
    assert result.calls == CFG.budget
    assert_same_outcome(run_dir, want)
    assert len(history(run_dir)) == GENERATIONS
    leftovers = sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".", "checkpoint-")))
    assert leftovers == [f"checkpoint-cma-{GENERATIONS:06d}.pkl"]
    assert checkpoint_doc(run_dir)["discarded"]["attempts"] >= 1  # carried over from the clean stop


async def test_cancelling_the_fit_task_leaves_a_resumable_directory(
        task: Task, llama_backend: LocalBackend, tmp_path: Path) -> None:
    want = await _reference(task, llama_backend, tmp_path / "reference")
    run_dir = tmp_path / "cancelled"
    second = asyncio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, GenerationReport) and event.generation == 2:
            second.set()

    fit = asyncio.ensure_future(BlackBoxTuner(task, llama_backend, CFG, run_dir=run_dir, evaluate_manual=True,
                                              callbacks=[on_event]).fit())
    await second.wait()
    fit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fit
    doc = checkpoint_doc(run_dir)
    assert doc["status"] == "interrupted" and doc["generation"] >= 2
    assert len(history(run_dir)) == doc["generation"]
    await tuner(task, llama_backend, run_dir).fit(resume=True)
    assert_same_outcome(run_dir, want)


async def test_workflow_resume_uses_the_stored_settings_and_checks_model_and_data(
        llama_backend: LocalBackend, gpt2_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sentiment_task(tmp_path)
    spec = TaskSpec("custom", "{sentence} . It was {mask}", ("bad", "great"), str(tmp_path / "train.tsv"),
                    str(tmp_path / "test.tsv"))
    settings = BackendSettings("local", "tiny", "cpu", "float32")
    want = tmp_path / "want"
    await workflows.fit(spec, llama_backend, settings, CFG, output=want)
    run_dir = tmp_path / "run"
    stop_at(monkeypatch, 5, "history")
    with pytest.raises(Crash):
        await workflows.fit(spec, llama_backend, settings, CFG, output=run_dir)
    monkeypatch.undo()

    with pytest.raises(ConfigError, match="another model"):
        await workflows.resume(run_dir, gpt2_backend)
    with pytest.raises(ConfigError, match="not the model the run was tuned on"):  # the tuner checks the projection
        await BlackBoxTuner(spec.build(), gpt2_backend, CFG, run_dir=run_dir).fit(resume=True)
    with pytest.raises(ConfigError, match="other settings: budget 38"):
        await BlackBoxTuner(spec.build(), llama_backend, TuneConfig(**{**CFG.to_dict(), "budget": 40, "bounds": None}),
                            run_dir=run_dir).fit(resume=True)
    train = tmp_path / "train.tsv"
    original = train.read_bytes()
    train.write_bytes(original + b"an extra row\t1\n")
    with pytest.raises(RunDirectoryError, match="train file.* changed"):
        await workflows.resume(run_dir, llama_backend)
    train.write_bytes(original)

    result = await BlackBoxTuner.resume(run_dir, llama_backend)  # the class-level form, same checks aside
    assert_same_outcome(run_dir, want)
    again = await workflows.resume(run_dir, llama_backend)  # finished: just the recorded result
    np.testing.assert_array_equal(again.best_z, result.best_z)
    assert (again.dev, again.calls, again.test.value) == (result.dev, result.calls, result.test.value)


async def test_a_run_directory_in_the_earlier_layout_resumes(
        task: Task, llama_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.json as the library wrote it before the typed record (no version, no baseline flag, a
    caller's own key beside the stored ones) still resumes, to the uninterrupted result."""
    want = await _reference(task, llama_backend, tmp_path / "reference")
    run_dir = tmp_path / "run"
    stop_at(monkeypatch, 4, "history")
    with pytest.raises(Crash):
        await tuner(task, llama_backend, run_dir).fit()
    monkeypatch.undo()
    written = json.loads((run_dir / "config.json").read_text("utf-8"))
    spec = TaskSpec("custom", "{sentence} . It was {mask}", ("bad", "great"), str(tmp_path / "train.tsv"),
                    str(tmp_path / "test.tsv"))
    earlier = json.loads(json.dumps({"model": written["model"], "service_job": "job-7", "task": spec.to_dict(),
                                     "tune": written["tune"]}))
    (run_dir / "config.json").write_text(json.dumps(earlier, indent=2, sort_keys=True) + "\n", "utf-8")

    run = RunDirectory.open(run_dir)
    assert run.record.version == 1 and run.record.baseline is False and run.record.notes == {"service_job": "job-7"}
    assert run.record.tune == CFG and run.record.task == spec
    await BlackBoxTuner.resume(run, llama_backend, evaluate_manual=True)
    assert_same_outcome(run_dir, want)
    assert json.loads((run_dir / "config.json").read_text("utf-8")) == earlier  # a resume never rewrites the record


def test_the_record_round_trips_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    spec = TaskSpec("sst2")
    record = RunConfig(CFG, spec, BackendSettings("local", "tiny"), None, True, {"train": "ab"}, {"job": "x"})
    assert RunConfig.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(ConfigError, match="record's own keys"):
        RunConfig(CFG, notes={"tune": 1})
    with pytest.raises(RunDirectoryError, match="format 2"):
        RunConfig.from_dict({**record.to_dict(), "version": 2})
    with pytest.raises(RunDirectoryError, match="does not describe a fit"):
        RunConfig.from_dict({"task": spec.to_dict()})
    (tmp_path / "config.json").write_text("{not json", "utf-8")
    with pytest.raises(RunDirectoryError, match="corrupt"):
        RunDirectory.open(tmp_path)


async def test_a_new_fit_refuses_a_used_directory_and_names_resume(task: Task, llama_backend: LocalBackend,
                                                                   tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    await tuner(task, llama_backend, run_dir).fit()
    with pytest.raises(RunDirectoryError, match="--resume"):
        await tuner(task, llama_backend, run_dir).fit()
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="not empty"):
        await tuner(task, llama_backend, other).fit()


# -- the checkpoint files themselves ----------------------------------------------------------------


def test_cmaes_restores_bit_for_bit_through_json(tmp_path: Path) -> None:
    a = CMAES(7, popsize=5, seed=9, bounds=(-2.0, 2.0))
    rng = np.random.default_rng(1)
    for _ in range(4):
        x = a.ask()
        a.tell(x, rng.standard_normal(5))
    state, blob = a.checkpoint()
    state = json.loads(json.dumps(state, allow_nan=False))
    np.random.seed(77)  # the global RNG moves on in between
    np.random.rand(13)
    b = CMAES(7, popsize=5, seed=1234, bounds=(-2.0, 2.0))
    b.restore(state, blob)
    for _ in range(4):
        x, y = a.ask(), b.ask()
        np.testing.assert_array_equal(x, y)
        losses = rng.standard_normal(5)
        a.tell(x, losses)
        b.tell(y, losses)
    np.testing.assert_array_equal(a.best_z, b.best_z)
    with pytest.raises(RunDirectoryError, match="another optimiser"):
        CMAES(8, popsize=5).restore(state, blob)


def test_the_optimiser_file_is_checked_and_never_runs_foreign_code(task: Task, tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    buf = io.BytesIO()
    pickle.Pickler(buf).dump(Evil())
    opt = CMAES(4, popsize=4, seed=1)
    state, _ = opt.checkpoint()
    with pytest.raises(RunDirectoryError, match="CMA-ES state"):
        opt.restore(state, buf.getvalue())
    assert not (tmp_path / "pwned").exists()


async def test_checkpoint_corruption_is_refused_with_the_file_named(task: Task, llama_backend: LocalBackend,
                                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    stop_at(monkeypatch, 3, "history")
    with pytest.raises(Crash):
        await tuner(task, llama_backend, run_dir).fit()
    run = RunDirectory.open(run_dir)
    doc = checkpoint_doc(run_dir)
    state_file = run_dir / doc["optimizer"]["file"]
    state_file.write_bytes(state_file.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RunDirectoryError, match="SHA-256"):
        load_checkpoint(run)
    (run_dir / "checkpoint.json").write_text(json.dumps({**doc, "optimizer": {**doc["optimizer"], "file": "../x.pkl"}}))
    with pytest.raises(RunDirectoryError, match="pattern"):
        load_checkpoint(run)
    (run_dir / "checkpoint.json").write_text(json.dumps({**doc, "format": 99}))
    with pytest.raises(RunDirectoryError, match="format 99"):
        load_checkpoint(run)
    (run_dir / "checkpoint.json").write_text("{not json")
    with pytest.raises(RunDirectoryError, match="corrupt"):
        load_checkpoint(run)


def test_rewind_history_cuts_a_torn_tail_and_refuses_a_short_or_corrupt_journal(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path / "r", RunConfig(TuneConfig()))
    for g in (1, 2, 3):
        run.append_history({"generation": g})
    with (run.path / "history.jsonl").open("a") as fh:
        fh.write('{"generation": 4, "lo')
    run.rewind_history(2)
    assert run.history() == [{"generation": 1}, {"generation": 2}]
    assert (run.path / "history.jsonl").read_text().endswith("}\n")
    with pytest.raises(RunDirectoryError, match="holds 2 complete generation"):
        run.rewind_history(3)
    (run.path / "history.jsonl").write_text('{"generation": 1}\nnot json\n{"generation": 3}\n')
    with pytest.raises(RunDirectoryError, match="line 2 is corrupt"):
        run.rewind_history(3)
