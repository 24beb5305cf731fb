"""Calibration of the label scores on content-free inputs (``--calibrate``; ``Task.with_calibration``).

The arithmetic on hand-made scores (what is taken off, with one and with several words per label);
the content-free inputs riding in the same calls as the labelled ones on the tiny causal model (the
budget charged exactly, two runs with one seed alike, a stopped run resumed to exactly the
uninterrupted outcome); the setting kept in the run's record and used by evaluate and predict.
No timings.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pause_points
import pytest
from remote_support import sentiment_fit_args, sentiment_task
from resume_support import Crash, assert_same_outcome, checkpoint_doc, history

from lmaas_tune.backends.base import Query, ScoringBatch
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.methods import TuneConfig
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.tasks import get_task
from lmaas_tune.tasks.spec import TaskSpec
from lmaas_tune.tasks.task import CONTENT_FREE, Task
from lmaas_tune.tasks.verbalizer import Verbalizer
from lmaas_tune.tuning.evaluation import LabelledBatch, bias, prepare, score_prompt, summarise
from lmaas_tune.tuning.tuner import BlackBoxTuner


def _batch(n: int, words: tuple[str, ...] = ("bad", "great")) -> ScoringBatch:
    return ScoringBatch(tuple(Query(f"x{i}", "") for i in range(n)), words)


def test_the_content_free_bias_is_taken_off_each_label() -> None:
    data = LabelledBatch(_batch(5), np.array([0, 1, 0]), content_free=2)
    assert len(data) == 3
    scores = np.array([[1.0, 0.0], [0.0, 0.5], [2.0, 2.0],  # the labelled inputs
                       [np.log(3.0), 0.0], [0.0, 0.0]])     # content-free: p = (3/4, 1/4) and (1/2, 1/2)
    got = data.class_scores(scores)
    log_p_cf = (np.log([0.75, 0.25]) + np.log([0.5, 0.5])) / 2  # the two softmaxes' mean log-probability
    np.testing.assert_allclose(got, scores[:3] - log_p_cf, rtol=0, atol=1e-12)
    # the argmax moves where the model's lean to label 0 decided it
    assert list(got.argmax(-1)) == [0, 1, 1] and list(scores[:3].argmax(-1)) == [0, 1, 0]
    # a population's scores [P, N + K, W] give [P, N, C]; each candidate is calibrated with its own rows
    pop = np.stack([scores, scores + np.array([0.0, 3.0])])
    out = data.class_scores(pop)
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out[0], got, atol=1e-12)
    shift = out[1] - got  # a constant lean on label 1 is calibrated away: only a constant per row is left
    np.testing.assert_allclose(shift - shift[:, :1], 0.0, atol=1e-12)


def test_a_uniform_content_free_answer_changes_nothing_but_a_constant() -> None:
    x = np.array([[0.3, -1.2, 4.0], [7.0, 7.0, 7.0], [-2.0, -2.0, -2.0]])
    np.testing.assert_allclose(bias(x[1:]), np.full((1, 3), np.log(1 / 3)), atol=1e-12)
    b = bias(np.array([[1e4, -1e4], [1e4, -1e4]]))  # extreme scores stay finite
    np.testing.assert_allclose(b, [[0.0, -2e4]])


def test_several_words_per_label_are_grouped_before_calibration() -> None:
    verbalizer = Verbalizer.of("bad|awful,great|good")
    data = LabelledBatch(_batch(3, verbalizer.words), np.array([1, 0]), verbalizer=verbalizer, content_free=1)
    scores = np.array([[0.0, 0.0, 1.0, 1.0], [2.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    labels = verbalizer.aggregate(scores)
    np.testing.assert_allclose(data.class_scores(scores), labels[:2] - bias(labels[2:]), atol=1e-12)


def test_a_batch_that_does_not_add_up_is_refused() -> None:
    with pytest.raises(ValueError, match="content-free"):
        LabelledBatch(_batch(4), np.array([0, 1]), content_free=1)


def test_the_task_renders_each_content_free_input_into_every_field() -> None:
    rte = get_task("rte").with_calibration()
    assert rte.calibration == CONTENT_FREE
    assert [set(e.texts.values()) for e in rte.content_free()] == [{t} for t in CONTENT_FREE]
    assert {len(e.texts) for e in rte.content_free()} == {2}
    assert get_task("rte").content_free() == []
    assert rte.with_calibration(()).calibration == ()
    assert rte.with_format(template="{premise} ? {mask} , {hypothesis}").calibration == CONTENT_FREE


def test_the_record_keeps_the_setting_and_an_old_record_reads_as_off() -> None:
    spec = TaskSpec("sst2", verbalizer="multi", calibrate=True)
    assert spec.build().calibration == CONTENT_FREE
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    assert "calibrate" not in TaskSpec("sst2").to_dict()
    assert TaskSpec.from_dict({"name": "sst2"}).calibrate is False


# -- on the tiny causal model ------------------------------------------------------------------------

CFG = TuneConfig(prompt_length=2, intrinsic_dim=6, popsize=4, budget=24, k_shot=4, eval_every=8, seed=5)


@pytest.fixture
def task(tmp_path: Path) -> Task:
    return sentiment_task(tmp_path).with_calibration()


async def test_content_free_rows_ride_in_the_same_calls(task: Task, llama_backend: LocalBackend) -> None:
    examples = task.load("test")
    data = await prepare(llama_backend, task, examples, 0)
    assert len(data) == len(examples) and len(data.batch) == len(examples) + len(CONTENT_FREE)
    raw = await score_prompt(llama_backend, None, data)
    assert raw.shape == (len(examples) + 3, 2)
    plain = await prepare(llama_backend, task.with_calibration(()), examples, 0)
    np.testing.assert_allclose(raw[:-3], await score_prompt(llama_backend, None, plain), atol=1e-5)
    ev = summarise(raw, data, "accuracy")
    want = (raw[:-3] - bias(raw[-3:])).argmax(-1)
    assert ev.predictions == tuple(int(p) for p in want) and ev.n == len(examples)


async def test_the_budget_is_charged_exactly_and_a_seed_repeats(
        task: Task, llama_backend: LocalBackend, tmp_path: Path) -> None:
    result = await BlackBoxTuner(task, llama_backend, CFG, run_dir=tmp_path / "a").fit()
    assert result.calls == CFG.budget == result.ledger["calls"]
    assert [r["calls"] for r in history(tmp_path / "a")] == [4 * g for g in range(1, 7)]
    await BlackBoxTuner(task, llama_backend, CFG, run_dir=tmp_path / "b").fit()
    assert_same_outcome(tmp_path / "b", tmp_path / "a")
    # the calibrated loss is not the plain one: the content-free rows are used, not only scored
    plain = await BlackBoxTuner(task.with_calibration(()), llama_backend, CFG, run_dir=tmp_path / "c").fit()
    assert plain.train_loss != result.train_loss


async def test_a_stopped_run_resumes_to_the_uninterrupted_outcome(
        task: Task, llama_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = tmp_path / "want"
    await BlackBoxTuner(task, llama_backend, CFG, run_dir=want).fit()
    run_dir = tmp_path / "stopped"

    def hook(at: str, gen: int) -> None:
        if (at, gen) == ("history", 3):
            raise Crash

    pause_points.install(hook, monkeypatch.setattr)
    with pytest.raises(Crash):
        await BlackBoxTuner(task, llama_backend, CFG, run_dir=run_dir).fit()
    assert checkpoint_doc(run_dir)["generation"] == 2
    monkeypatch.undo()
    result = await BlackBoxTuner(task, llama_backend, CFG, run_dir=run_dir).fit(resume=True)
    assert result.calls == CFG.budget
    assert_same_outcome(run_dir, want)


def test_the_cli_records_calibration_and_evaluate_and_predict_use_it(llama_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmaas_tune.cli import app
    from lmaas_tune.runs.saved import SavedRun
    from lmaas_tune.tasks.data import Example

    args = sentiment_fit_args(tmp_path, llama_dir, budget=8)
    runner = CliRunner()
    run_dir = tmp_path / "run"
    done = runner.invoke(app, ["fit", *args, "--calibrate", "-o", str(run_dir)])
    assert done.exit_code == 0, done.output
    record = RunConfig.read(run_dir)
    assert record.task is not None and record.task.calibrate
    refused = runner.invoke(app, ["fit", "--resume", str(run_dir), "--no-calibrate"])
    assert refused.exit_code == 2 and "--calibrate False (the run has True)" in refused.output

    stored = json.loads((run_dir / "result.json").read_text("utf-8"))["test"]
    ev = runner.invoke(app, ["evaluate", str(run_dir), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output)["value"] == pytest.approx(stored["value"])

    texts = ["a fine film", "dull and slow", "it was fine"]
    rows = tmp_path / "rows.txt"
    rows.write_text("".join(t + "\n" for t in texts), "utf-8")
    got = runner.invoke(app, ["predict", str(run_dir), "-i", str(rows), "--quiet"])
    assert got.exit_code == 0, got.output
    probs = np.array([[p["probabilities"][w] for w in ("bad", "great")]
                      for p in map(json.loads, got.stdout.splitlines())])

    async def by_hand(calibrated: bool) -> np.ndarray:
        saved = SavedRun.load(run_dir)
        task = saved.task.build()
        task = task if calibrated else task.with_calibration(())
        async with LocalBackend.load(str(llama_dir), device="cpu") as backend:
            data = await prepare(backend, task, [Example({"sentence": t}, 0) for t in texts], 2)
            x = data.class_scores(await score_prompt(backend, saved.prompt(), data))
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    np.testing.assert_allclose(probs, asyncio.run(by_hand(True)), atol=1e-5)
    assert not np.allclose(probs, asyncio.run(by_hand(False)), atol=1e-5)  # the calibration was applied


async def test_content_free_inputs_that_do_not_fit_are_refused(llama_backend: LocalBackend, tmp_path: Path) -> None:
    from lmaas_tune.errors import DataError
    from lmaas_tune.tasks.data import Example

    task = sentiment_task(tmp_path).with_calibration()
    short = [Example({"sentence": "a"}, 0), Example({"sentence": "b"}, 1)]
    kind = llama_backend.info.kind
    longest = max(await llama_backend.token_lengths(task.render(short, kind)))
    cf = max(await llama_backend.token_lengths(task.render(task.content_free(), kind)))
    assert cf > longest  # "[MASK]" is longer than one letter
    room = llama_backend.info.max_length - longest  # the inputs just fit with a prompt this long
    with pytest.raises(DataError, match="content-free inputs of calibration do not fit"):
        await prepare(llama_backend, task, short, room)
    assert len(await prepare(llama_backend, task.with_calibration(()), short, room)) == 2
