"""Several label words per label: the aggregation, its parsing and validation, the registered sets,
and a tiny-model fit with multi-word labels that spends its budget, repeats, resumes to the
uninterrupted result, and evaluates and predicts as it recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pause_points
import pytest
from remote_support import sentiment_task
from resume_support import Crash, assert_same_outcome, checkpoint_doc

from lmaas_tune.backends.base import ModelKind, ScoringBatch
from lmaas_tune.backends.factory import BackendSettings
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.cli.options import TaskOptions
from lmaas_tune.errors import ConfigError, UnknownNameError, VerbalizerError
from lmaas_tune.methods import TuneConfig
from lmaas_tune.methods.losses import LOSSES
from lmaas_tune.runs.record import RunConfig
from lmaas_tune.runs.saved import SavedRun
from lmaas_tune.tasks import TASKS, TaskSpec, Verbalizer, get_task
from lmaas_tune.tasks.data import Example
from lmaas_tune.tasks.spec import split_words
from lmaas_tune.tasks.task import custom_task
from lmaas_tune.tuning import workflows
from lmaas_tune.tuning.evaluation import LabelledBatch, evaluate_prompt, prepare
from lmaas_tune.tuning.predict import predict
from lmaas_tune.tuning.tuner import BlackBoxTuner

pytestmark = pytest.mark.filterwarnings("ignore:Could not import matplotlib")

MULTI = Verbalizer.of("bad|terrible,great|good")  # all four single tokens of the tiny tokenizers
CFG = TuneConfig(prompt_length=2, intrinsic_dim=6, popsize=4, budget=14, k_shot=4, eval_every=8, seed=5)


def _lse(x: np.ndarray) -> np.ndarray:
    return np.logaddexp.reduce(x.astype(np.float64), axis=-1)


def _scores(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (3.0 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# -- aggregation --------------------------------------------------------------------------------------


def test_one_word_per_label_returns_the_scores_unchanged() -> None:
    paper = Verbalizer.of("bad,great")
    assert paper.single and paper.words == paper.names == ("bad", "great")
    x = _scores((3, 5, 2))
    got = paper.aggregate(x)
    assert got is x and got.dtype == np.float32  # the same array: bit for bit what the backend returned
    data = LabelledBatch(_batch(paper), np.zeros(2, dtype=np.int64), verbalizer=paper)
    assert data.class_scores(x) is x
    assert LabelledBatch(_batch(paper), np.zeros(2, dtype=np.int64)).class_scores(x) is x


def test_aggregate_is_the_log_sum_exp_of_each_labels_words() -> None:
    v = Verbalizer.of("a|b|c,d,e|f")  # labels of 3, 1 and 2 words
    assert v.words == ("a", "b", "c", "d", "e", "f") and v.names == ("a", "d", "e") and v.num_classes == 3
    x = _scores((4, 7, 6), seed=1)
    got = v.aggregate(x)
    assert got.shape == (4, 7, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got[..., 0], _lse(x[..., 0:3]), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got[..., 1], x[..., 3].astype(np.float64))  # one word: exactly its score
    np.testing.assert_allclose(got[..., 2], _lse(x[..., 4:6]), rtol=0, atol=1e-12)
    # for logits, the softmax over labels is each label's share of its words' probability
    p_words = np.exp(x - _lse(x)[..., None])
    p_labels = np.exp(got - _lse(got)[..., None])
    np.testing.assert_allclose(p_labels, np.stack([p_words[..., 0:3].sum(-1), p_words[..., 3],
                                                   p_words[..., 4:6].sum(-1)], axis=-1), atol=1e-12)


def test_logits_and_log_probabilities_give_the_same_losses_and_predictions() -> None:
    """Scores that differ by a constant per row (logits vs log-probabilities) give label scores
    that differ by that constant, so every loss and every prediction is the same."""
    v = Verbalizer.of("a|b|c,d|e")
    logits = _scores((5, 8, 5), seed=2).astype(np.float64)
    shift = 40.0 * np.random.default_rng(3).standard_normal((5, 8, 1))
    logprobs = logits + shift
    a, b = v.aggregate(logits), v.aggregate(logprobs)
    np.testing.assert_allclose(b - a, np.broadcast_to(shift, a.shape), atol=1e-9)
    labels = np.random.default_rng(4).integers(0, 2, 8)
    for name in ("ce", "hinge", "acc"):
        np.testing.assert_allclose(LOSSES.get(name)(a, labels), LOSSES.get(name)(b, labels), atol=1e-9)
    np.testing.assert_array_equal(a.argmax(-1), b.argmax(-1))


def test_aggregate_is_stable_and_keeps_infinities() -> None:
    v = Verbalizer.of("a|b,c|d")
    x = np.array([[1000.0, 1000.0, -1000.0, -np.inf], [-np.inf, -np.inf, 0.0, np.nan]])
    got = v.aggregate(x)
    assert got[0, 0] == pytest.approx(1000.0 + np.log(2.0)) and got[0, 1] == -1000.0
    assert got[1, 0] == -np.inf and np.isnan(got[1, 1])
    with pytest.raises(ValueError, match="3 label words"):
        v.aggregate(np.zeros((2, 3)))


# -- parsing and validation ---------------------------------------------------------------------------


def test_parsing_the_command_line_syntax() -> None:
    want = Verbalizer((("negative", "bad", "terrible"), ("positive", "good", "great")))
    for given in ("negative|bad|terrible,positive|good|great", " negative | bad|terrible , positive|good |great ",
                  ["negative|bad|terrible", "positive|good|great"],
                  [["negative", "bad", "terrible"], ("positive", "good", "great")], want):
        assert Verbalizer.of(given) == want
    assert str(want) == "negative|bad|terrible,positive|good|great"
    assert want.entries() == ("negative|bad|terrible", "positive|good|great")
    assert want.names == ("negative", "positive") and not want.single
    assert split_words("negative | bad, positive|good") == ("negative|bad", "positive|good")
    assert split_words("bad, great") == ("bad", "great") and split_words(None) is None


@pytest.mark.parametrize(("words", "match"), [
    ("bad,,great", "label 2 of .* has no label words"),
    ("bad,great,", "label 3 of .* has no label words"),
    ("bad|,great", r"label 1 of .* has an empty label word \('bad\|'\)"),
    ("bad|good,great|good", r"label words repeat: \['good'\]; give each word once, to one label only"),
    ("bad|bad,great", r"label words repeat: \['bad'\]"),
    ("bad,bad", r"label words repeat: \['bad'\]"),
    ("bad|terrible", "need label words for at least two labels"),
    ("bad", "need at least two label words"),
])
def test_malformed_verbalizers_are_refused_naming_the_fix(words: str, match: str) -> None:
    with pytest.raises(VerbalizerError, match=match) as info:
        Verbalizer.of(words)
    assert isinstance(info.value, ConfigError)


def _batch(v: Verbalizer) -> ScoringBatch:
    task = custom_task(template="{sentence} . It was {mask}", label_words=v, train="x.tsv", test="x.tsv")
    return task.render([Example({"sentence": "a"}, 0), Example({"sentence": "b"}, 1)], ModelKind.CAUSAL)


def test_a_task_renders_the_flat_words_and_counts_labels() -> None:
    task = custom_task(template="{sentence} . It was {mask}", label_words="bad|terrible,great|good", train="x.tsv",
                       test="x.tsv")
    assert task.num_labels == 2
    batch = _batch(MULTI)
    assert batch.label_words == ("bad", "terrible", "great", "good")  # the backend's contract: a flat tuple
    with pytest.raises(ValueError, match="not the batch's"):
        LabelledBatch(batch, np.zeros(2, dtype=np.int64), verbalizer=Verbalizer.of("bad,great"))


def test_registered_task_with_multi_word_labels_and_the_count_check() -> None:
    task = TaskSpec("sst2", label_words=("negative|bad", "positive|good")).build()
    assert task.num_labels == 2
    for kind in ModelKind:
        assert task.format_for(kind).verbalizer == Verbalizer.of("negative|bad,positive|good")
    with pytest.raises(VerbalizerError, match=r"task 'sst2' has 2 labels but the label words "
                                              r"'negative,bad,positive' name 3; give one entry per label"):
        TaskSpec("sst2", label_words=("negative", "bad", "positive")).build()


def test_registered_verbalizers_keep_the_papers_words_as_default() -> None:
    sst2, agnews = get_task("sst2"), get_task("agnews")
    assert sst2.masked is not None and sst2.masked.label_words == ("bad", "great")
    assert sst2.format_for(ModelKind.CAUSAL).label_words == ("negative", "positive")
    assert agnews.format_for(ModelKind.CAUSAL).label_words == ("World", "Sports", "Business", "Tech")
    for name in ("sst2", "yelpp", "agnews"):
        task = TASKS.get(name)
        assert "multi" in task.verbalizers
        multi = TaskSpec(name, verbalizer="multi").build()
        for kind in ModelKind:
            fmt = multi.format_for(kind)
            assert fmt.verbalizer == task.verbalizers["multi"] and not fmt.verbalizer.single
            assert fmt.verbalizer.num_classes == task.num_labels
            # the paper's causal words name the labels
            assert fmt.verbalizer.names == task.format_for(ModelKind.CAUSAL).verbalizer.names
    with pytest.raises(UnknownNameError, match="task 'sst2' has no verbalizer 'many'; registered: multi"):
        TaskSpec("sst2", verbalizer="many").build()
    with pytest.raises(UnknownNameError, match="task 'rte' has no verbalizer 'multi'; it registers none"):
        TaskSpec("rte", verbalizer="multi").build()
    with pytest.raises(ConfigError, match="--label-words or --verbalizer, not both"):
        TaskSpec("sst2", label_words=("bad", "great"), verbalizer="multi").build()
    with pytest.raises(ConfigError, match="a custom task has none"):
        TaskSpec("custom", "{sentence} {mask}", ("a", "b"), "x.tsv", "x.tsv", verbalizer="multi").build()


def test_cli_options_parse_the_bar_syntax_and_the_registered_name() -> None:
    spec = TaskOptions(task="sst2", label_words="negative|bad|terrible, positive|good|great").spec()
    assert spec.label_words == ("negative|bad|terrible", "positive|good|great") and spec.verbalizer is None
    spec = TaskOptions(task="agnews", verbalizer="multi").spec()
    assert spec.verbalizer == "multi" and spec.label_words is None
    # on a stored run, one of the two given replaces both
    stored = TaskSpec("sst2", verbalizer="multi")
    assert TaskOptions().spec(stored) == stored
    assert TaskOptions(label_words="bad,great").spec(stored) == TaskSpec("sst2", label_words=("bad", "great"))
    with pytest.raises(ConfigError, match="not both"):
        TaskOptions(task="sst2", label_words="bad,great", verbalizer="multi").spec()


def test_the_record_stores_the_grouping_and_older_records_still_read(tmp_path: Path) -> None:
    multi = TaskSpec("custom", "{sentence} . It was {mask}", ("bad|terrible", "great|good"), "t.tsv", "t.tsv")
    d = json.loads(json.dumps(multi.to_dict()))
    assert d["label_words"] == ["bad|terrible", "great|good"] and "verbalizer" not in d
    assert TaskSpec.from_dict(d) == multi
    named = TaskSpec("sst2", verbalizer="multi")
    assert TaskSpec.from_dict(json.loads(json.dumps(named.to_dict()))) == named
    # an earlier record (one word per label, no verbalizer key) reads as it always did
    old: dict[str, Any] = {"name": "custom", "template": "{sentence} . It was {mask}", "label_words": ["bad", "great"],
           "train": "t.tsv", "test": "t.tsv", "columns": {}, "label_column": "label", "labels": None, "metric": None}
    spec = TaskSpec.from_dict(old)
    assert spec.label_words == ("bad", "great") and spec.verbalizer is None
    assert json.loads(json.dumps(spec.to_dict())) == old  # and writes the same record
    # a list of lists (a hand-written JSON or TOML file) is read as one entry per label
    assert TaskSpec.from_dict({**old, "label_words": [["bad", "terrible"], ["great", "good"]]}).label_words == \
        ("bad|terrible", "great|good")
    record = RunConfig(CFG, multi, BackendSettings("local", "tiny"))
    assert RunConfig.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_a_task_file_takes_several_words_per_label(tmp_path: Path) -> None:
    sentiment_task(tmp_path)
    for value in ('"bad | terrible, great|good"', '[["bad", "terrible"], ["great", "good"]]',
                  '["bad|terrible", "great|good"]'):
        path = tmp_path / "task.toml"
        path.write_text(f'template = "{{sentence}} . It was {{mask}}"\nlabel_words = {value}\n'
                        f'train = "train.tsv"\ntest = "test.tsv"\n', "utf-8")
        spec = TaskSpec.from_file(path)
        assert spec.label_words == ("bad|terrible", "great|good"), value
        assert spec.build().format_for(ModelKind.CAUSAL).verbalizer == MULTI
    path.write_text('name = "sst2"\nverbalizer = "multi"\n', "utf-8")
    assert TaskSpec.from_file(path) == TaskSpec("sst2", verbalizer="multi")


# -- a fit with several words per label ---------------------------------------------------------------


def _spec(tmp: Path) -> TaskSpec:
    sentiment_task(tmp)
    return TaskSpec("custom", "{sentence} . It was {mask}", MULTI.entries(), str(tmp / "train.tsv"),
                    str(tmp / "test.tsv"))


async def test_zero_shot_scores_are_the_grouped_word_scores(llama_backend: LocalBackend, tmp_path: Path) -> None:
    task = _spec(tmp_path).build()
    examples = task.load("test")
    data = await prepare(llama_backend, task, examples, 0)
    words = await llama_backend.score(None, data.batch)  # [1, N, 4]
    assert words.shape == (1, len(examples), 4)
    manual = np.stack([_lse(words[0, :, 0:2]), _lse(words[0, :, 2:4])], axis=-1)
    got = await evaluate_prompt(llama_backend, task, examples)
    assert got.predictions == tuple(int(i) for i in manual.argmax(-1))
    assert got.value == pytest.approx(float((manual.argmax(-1) == data.labels).mean()))


async def test_fit_with_multi_word_labels_is_exact_repeatable_and_resumes_to_the_same_result(
        llama_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    settings = BackendSettings("local", "tiny", "cpu", "float32")
    want = tmp_path / "want"
    first = await workflows.fit(spec, llama_backend, settings, CFG, output=want)
    assert first.calls == CFG.budget and checkpoint_doc(want)["ledger"]["calls"] == CFG.budget
    stored = json.loads((want / "config.json").read_text("utf-8"))["task"]
    assert stored["label_words"] == ["bad|terrible", "great|good"]

    again = await workflows.fit(spec, llama_backend, settings, CFG, output=tmp_path / "again")
    np.testing.assert_array_equal(again.best_z, first.best_z)
    assert (again.dev, again.train_loss, again.test, again.manual) == \
        (first.dev, first.train_loss, first.test, first.manual)
    assert_same_outcome(tmp_path / "again", want)

    # the multi-word verbalizer is what the losses read: one word per label tunes to another loss
    single = TaskSpec(spec.name, spec.template, ("bad", "great"), spec.train, spec.test)
    plain = await BlackBoxTuner(single.build(), llama_backend, CFG, evaluate_test=False).fit()
    assert plain.train_loss != first.train_loss

    stopped = tmp_path / "stopped"

    def crash(at: str, generation: int) -> None:
        if (at, generation) == ("history", 2):
            raise Crash

    pause_points.install(crash, monkeypatch.setattr)
    with pytest.raises(Crash):
        await workflows.fit(spec, llama_backend, settings, CFG, output=stopped)
    monkeypatch.undo()
    assert checkpoint_doc(stopped)["generation"] == 1
    resumed = await workflows.resume(stopped, llama_backend)
    assert resumed.calls == CFG.budget
    assert_same_outcome(stopped, want)

    # evaluate and predict the stored run: the record rebuilds the grouping
    saved = SavedRun.load(stopped)
    assert saved.task.build().format_for(ModelKind.CAUSAL).verbalizer == MULTI
    evaluated = await workflows.evaluate_run(saved, llama_backend)
    assert first.test is not None and evaluated.value == first.test.value
    assert evaluated.predictions == first.test.predictions
    rows = [dict(e.texts) for e in saved.task.build().load("test")]
    preds = await predict(stopped, llama_backend, rows, batch_size=5)
    assert [p.label_index for p in preds] == list(first.test.predictions)
    for p in preds:
        assert p.probabilities is not None and set(p.probabilities) == {"bad", "great"}
        assert p.label == ("bad", "great")[p.label_index or 0]
        assert sum(p.probabilities.values()) == pytest.approx(1.0)
