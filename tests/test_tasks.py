"""Tasks: the paper's registry, templates, custom tasks from local files, and data errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmaas_tune.backends.base import ModelKind, Query
from lmaas_tune.errors import ConfigError, DataError, TemplateError, UnknownNameError, VerbalizerError
from lmaas_tune.tasks import TASKS, HubSource, PromptFormat, TaskSpec, Template, custom_task, get_task, read_rows

PAPER = {
    # name: (masked template, label words in label order, metric) -- DESIGN.md §1
    "sst2": ("{sentence} . It was {mask} .", ("bad", "great"), "accuracy"),
    "yelpp": ("{sentence} . It was {mask} .", ("bad", "great"), "accuracy"),
    "agnews": ("{mask} News: {sentence}", ("World", "Sports", "Business", "Tech"), "accuracy"),
    "dbpedia": (
        "[ Category: {mask} ] {sentence}",
        ("Company", "Education", "Artist", "Athlete", "Office", "Transportation", "Building",
         "Natural", "Village", "Animal", "Plant", "Album", "Film", "Written"),
        "accuracy",
    ),
    "mrpc": ("{sentence1} ? {mask} , {sentence2}", ("No", "Yes"), "f1"),
    "rte": ("{sentence1} ? {mask} , {sentence2}", ("Yes", "No"), "accuracy"),
    "snli": ("{sentence1} ? {mask} , {sentence2}", ("Yes", "Maybe", "No"), "accuracy"),
}


# -- the registry --------------------------------------------------------------------------------


def test_registry_holds_the_seven_paper_tasks() -> None:
    assert set(TASKS) == set(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_templates_and_label_words(name: str) -> None:
    template, words, metric = PAPER[name]
    task = get_task(name)
    assert task.name == name
    assert task.masked is not None and task.masked.template.text == template
    assert task.masked.label_words == words
    assert task.format_for(ModelKind.MASKED) is task.masked
    assert task.num_labels == len(words)
    assert task.metric == metric
    # the causal form may word things differently, but keeps the labels and ends at the label slot
    causal = task.format_for(ModelKind.CAUSAL)
    assert len(causal.label_words) == len(words)
    assert causal.template.text.endswith("{mask}")
    assert set(causal.template.fields) == set(task.masked.template.fields)


def test_sst2_renders_for_each_model_kind() -> None:
    from lmaas_tune.tasks import Example

    task = get_task("sst2")
    ex = [Example({"sentence": "a great movie "}, 1)]
    masked = task.render(ex, ModelKind.MASKED)
    assert masked.queries == (Query("a great movie . It was", " ."),)
    assert masked.label_words == ("bad", "great")
    causal = task.render(ex, ModelKind.CAUSAL)
    (q,) = causal.queries
    assert q.suffix == "" and "a great movie" in q.prefix and not q.prefix.endswith(" ")
    assert causal.label_words == task.format_for(ModelKind.CAUSAL).label_words


@pytest.mark.parametrize(("alias", "name"), [
    ("SST-2", "sst2"), ("sst", "sst2"), ("Sst2", "sst2"), ("AG_News", "agnews"), ("ag", "agnews"),
    ("yelp_polarity", "yelpp"), ("Yelp-P", "yelpp"), ("DBpedia_14", "dbpedia"), ("RTE", "rte"),
])
def test_aliases(alias: str, name: str) -> None:
    assert get_task(alias) is get_task(name)
    assert TASKS.canonical(alias) == name
    assert alias in TASKS


def test_unknown_task_lists_known_tasks() -> None:
    with pytest.raises(UnknownNameError) as err:
        get_task("sst3")
    msg = str(err.value)
    assert "sst3" in msg
    assert all(name in msg.split("Known:")[1] for name in PAPER)
    assert "Did you mean sst2" in msg
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    with pytest.raises(ConfigError, match="Known: .*rte"):
        TaskSpec(name="nonsense").build()


def test_hub_task_without_datasets_says_how_to_get_it() -> None:
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("the optional `datasets` extra is installed; the offline hint is not reachable")
    assert isinstance(get_task("snli").source, HubSource)
    with pytest.raises(ConfigError, match="lmaas-tune\\[hub\\]"):
        get_task("snli").load("train")


# -- templates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "match"), [
    ("{sentence} was good", "exactly one \\{mask\\}"),
    ("{sentence} {mask} {mask}", "found 2"),
    ("{} {mask}", "unnamed slot"),
    ("{0} {mask}", "unnamed slot"),
    ("It was {mask}", "no input slot"),
    ("{sentence {mask}", "malformed"),
])
def test_template_errors(text: str, match: str) -> None:
    with pytest.raises(TemplateError, match=match):
        Template(text)


def test_causal_template_must_end_with_mask() -> None:
    t = Template("{sentence} . It was {mask} .")
    t.check_kind(ModelKind.MASKED)
    with pytest.raises(TemplateError, match="text after"):
        t.check_kind(ModelKind.CAUSAL)
    Template("{sentence} It was {mask}  \n").check_kind(ModelKind.CAUSAL)  # trailing whitespace is fine
    task = custom_task(template="{sentence} . It was {mask} .", label_words="bad,great", train="t.tsv", test="t.tsv")
    with pytest.raises(TemplateError):
        task.format_for(ModelKind.CAUSAL)


def test_template_render() -> None:
    t = Template("{a} ? {mask} , {b}\\nend")
    assert t.fields == ("a", "b")
    assert t.text == "{a} ? {mask} , {b}\nend"
    q = t.render({"a": " first ", "b": "second", "unused": "x"})
    assert q == Query("first ?", " , second\nend")
    with pytest.raises(TemplateError, match="needs field"):
        t.render({"a": "x"})


@pytest.mark.parametrize(("words", "match"), [(("great",), "at least two"), (("a", "a"), "repeat"), (("a", " "), "empty")])
def test_label_word_errors(words: tuple[str, ...], match: str) -> None:
    with pytest.raises(VerbalizerError, match=match):
        PromptFormat.of("{sentence} {mask}", words)


def test_with_format_overrides_template_and_words() -> None:
    task = get_task("sst2").with_format("Review: {sentence} Sentiment:{mask}", "negative, positive")
    for kind in ModelKind:
        fmt = task.format_for(kind)
        assert fmt.label_words == ("negative", "positive")
        assert fmt.template.text == "Review: {sentence} Sentiment:{mask}"
    with pytest.raises(ConfigError, match="2 labels"):
        get_task("sst2").with_format(label_words=("a", "b", "c"))


# -- custom tasks from local files -----------------------------------------------------------------

ROWS = [("a great movie", "1"), ("a bad movie", "0"), ("good fun", "1"), ("terrible", "0"), ("it was great", "1")]


def _write(path: Path, fmt: str, rows=ROWS, text_col: str = "text", label_col: str = "label") -> str:
    if fmt == "tsv":
        path.write_text(f"{text_col}\t{label_col}\n" + "".join(f"{t}\t{y}\n" for t, y in rows), "utf-8")
    elif fmt == "csv":
        path.write_text(f"{text_col},{label_col}\n" + "".join(f'"{t}, really",{y}\n' for t, y in rows), "utf-8")
    else:
        path.write_text("".join(json.dumps({text_col: t, label_col: int(y)}) + "\n\n" for t, y in rows), "utf-8")
    return str(path)


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_custom_task_from_file(tmp_path: Path, fmt: str) -> None:
    train = _write(tmp_path / f"train.{fmt}", fmt)
    test = _write(tmp_path / f"test.{fmt}", fmt, ROWS[:2])
    task = custom_task(template="{sentence} . It was {mask} .", label_words=("bad", "great"), train=train,
                       test=test, columns={"sentence": "text"})
    examples = task.load("train")
    assert [e.label for e in examples] == [1, 0, 1, 0, 1]
    first = "a great movie, really" if fmt == "csv" else "a great movie"
    assert examples[0].texts == {"sentence": first}
    assert len(task.load("test")) == 2
    assert task.render(examples[:1], ModelKind.MASKED).queries[0] == Query(f"{first} . It was", " .")


def test_label_inference_is_numeric_then_lexical(tmp_path: Path) -> None:
    rows = [("x", "10"), ("y", "2"), ("z", "-1")]
    path = _write(tmp_path / "n.tsv", "tsv", rows)
    task = custom_task(template="{text} {mask}", label_words="a,b,c", train=path, test=path)
    assert [e.label for e in task.load("train")] == [2, 1, 0]  # -1 < 2 < 10, not "-1" < "10" < "2"
    rows = [("x", "pos"), ("y", "neg"), ("z", "neu")]
    path = _write(tmp_path / "s.tsv", "tsv", rows)
    task = custom_task(template="{text} {mask}", label_words="a,b,c", train=path, test=path)
    assert [e.label for e in task.load("train")] == [2, 0, 1]  # neg, neu, pos
    # explicit label order wins
    task = custom_task(template="{text} {mask}", label_words="a,b,c", train=path, test=path, labels="pos,neu,neg")
    assert [e.label for e in task.load("train")] == [0, 2, 1]


def test_custom_label_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", "tsv", text_col="review", label_col="stars")
    task = custom_task(template="{review} {mask}", label_words="bad,great", train=path, test=path, label_column="stars")
    assert [e.label for e in task.load("test")] == [1, 0, 1, 0, 1]


def test_column_for_unknown_field_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="does not use"):
        custom_task(template="{sentence} {mask}", label_words="a,b", train="x.tsv", test="x.tsv", columns={"other": "c"})


def test_template_field_not_in_data(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", "tsv")
    task = custom_task(template="{text} {mask}", label_words="bad,great", train=path, test=path)
    task = task.with_format("{text} and {other} {mask}")
    with pytest.raises(TemplateError, match="\\['other'\\] that the data does not map"):
        task.load("train")


def _error(tmp_path: Path, name: str, content: bytes | None, **kw) -> DataError:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    task = custom_task(template="{text} {mask}", label_words="bad,great", train=str(path), test=str(path), **kw)
    with pytest.raises(DataError) as err:
        task.load("train")
    return err.value


def test_data_errors(tmp_path: Path) -> None:
    assert "not found" in str(_error(tmp_path, "missing.tsv", None))
    assert "empty" in str(_error(tmp_path, "empty.tsv", b""))
    assert "no examples" in str(_error(tmp_path, "header.tsv", b"text\tlabel\n"))
    assert "no examples" in str(_error(tmp_path, "empty.jsonl", b"\n\n"))
    err = _error(tmp_path, "cols.tsv", b"sentence\tlabel\nhi\t0\nho\t1\n")
    assert "missing column" in str(err) and "'text'" in str(err) and "sentence" in str(err)
    err = _error(tmp_path, "latin1.tsv", "text\tlabel\ncaf\u00e9\t0\nna\u00efve\t1\n".encode("latin-1"))
    assert "not UTF-8" in str(err)
    err = _error(tmp_path, "latin1.jsonl", '{"text": "caf\u00e9", "label": 0}\n'.encode("latin-1"))
    assert "not UTF-8" in str(err)
    err = _error(tmp_path, "outside.tsv", b"text\tlabel\na\t0\nb\t1\nc\t7\n", labels="0,1")
    assert "row 4" in str(err) and "'7'" in str(err)
    err = _error(tmp_path, "three.tsv", b"text\tlabel\na\t0\nb\t1\nc\t2\n")
    assert "3 label value(s)" in str(err)
    err = _error(tmp_path, "ragged.tsv", b"text\tlabel\na\t0\nb\t1\textra\n")
    assert "row 3 has 3 fields" in str(err)
    err = _error(tmp_path, "bad.jsonl", b'{"text": "a", "label": 0}\n{"text": \n')
    assert "line 2" in str(err)
    err = _error(tmp_path, "list.jsonl", b'[1, 2]\n')
    assert "JSON object" in str(err)
    assert "unknown type" in str(_error(tmp_path, "data.xlsx", b"x"))


def test_tsv_is_read_without_quoting(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text('text\tlabel\n"quoted start\t0\nplain" end\t1\n', "utf-8")
    rows = read_rows(str(path))
    assert rows == [{"text": '"quoted start', "label": "0"}, {"text": 'plain" end', "label": "1"}]


def test_jsonl_values_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    path.write_text('{"text": "a", "label": 1, "extra": null}\n{"text": 3.5, "label": 0, "extra": true}\n', "utf-8")
    assert read_rows(str(path)) == [{"text": "a", "label": "1", "extra": ""}, {"text": "3.5", "label": "0", "extra": "True"}]


# -- TaskSpec ------------------------------------------------------------------------------------


def test_task_spec_round_trip(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", "tsv")
    spec = TaskSpec(name="custom", template="{sentence} It was {mask}", label_words=("bad", "great"), train=path,
                    test=path, columns={"sentence": "text"}, labels=("0", "1"), metric="f1")
    data = json.loads(json.dumps(spec.to_dict()))
    again = TaskSpec.from_dict(data)
    assert again == spec
    task = again.build()
    assert task.metric == "f1" and task.num_labels == 2
    assert [e.label for e in task.load("train")] == [1, 0, 1, 0, 1]


def test_task_spec_registered_with_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", "tsv", text_col="sentence")
    task = TaskSpec(name="SST-2", train=path, test=path).build()
    assert task.name == "sst2"
    assert [e.label for e in task.load("train")] == [1, 0, 1, 0, 1]
    task = TaskSpec(name="mrpc", metric="accuracy").build()
    assert task.metric == "accuracy"
    with pytest.raises(ConfigError, match="both"):
        TaskSpec(name="sst2", train=path).build()
    with pytest.raises(ConfigError, match="--template, --label-words"):
        TaskSpec(train=path, test=path).build()


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_task_spec_from_file(tmp_path: Path, suffix: str) -> None:
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "train.tsv", "tsv", text_col="review")
    _write(tmp_path / "data" / "test.tsv", "tsv", ROWS[:3], text_col="review")
    conf = tmp_path / f"task{suffix}"
    if suffix == ".toml":
        conf.write_text(
            'template = "{sentence} . It was {mask}"\nlabel_words = "bad, great"\n'
            'train = "data/train.tsv"\ntest = "data/test.tsv"\n[columns]\nsentence = "review"\n', "utf-8")
    else:
        conf.write_text(json.dumps({
            "template": "{sentence} . It was {mask}", "label_words": ["bad", "great"], "train": "data/train.tsv",
            "test": "data/test.tsv", "columns": {"sentence": "review"}}), "utf-8")
    spec = TaskSpec.from_file(conf)
    assert spec.label_words == ("bad", "great")
    assert Path(spec.train or "") == (tmp_path / "data" / "train.tsv").resolve()
    task = spec.build()
    assert len(task.load("train")) == 5 and len(task.load("test")) == 3
    assert TaskSpec.from_dict(spec.to_dict()) == spec


def test_task_spec_file_labels_as_a_string(tmp_path: Path) -> None:
    rows = [("x", "neg"), ("y", "pos"), ("z", "pos")]
    _write(tmp_path / "d.tsv", "tsv", rows)
    conf = tmp_path / "task.toml"
    conf.write_text('template = "{text} It was {mask}"\nlabel_words = "bad, great"\nlabels = "pos, neg"\n'
                    'train = "d.tsv"\ntest = "d.tsv"\n', "utf-8")
    spec = TaskSpec.from_file(conf)
    assert spec.labels == ("pos", "neg")
    assert [e.label for e in spec.build().load("train")] == [1, 0, 0]


def test_task_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        TaskSpec.from_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("template = \n", "utf-8")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        TaskSpec.from_file(bad)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"template": "{s} {mask}", "label_map": "a,b"}), "utf-8")
    with pytest.raises(ConfigError, match="unknown key"):
        TaskSpec.from_file(extra)


# -- shipped data --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "n", "labels"), [("sst2", 872, 2), ("rte", 277, 2), ("agnews", 7600, 4)])
def test_shipped_test_sets(name: str, n: int, labels: int) -> None:
    examples = get_task(name).load("test")
    assert len(examples) == n
    assert {e.label for e in examples} == set(range(labels))
    assert all(all(v for v in e.texts.values()) for e in examples)


def test_shipped_label_mapping() -> None:
    sst2 = get_task("sst2").load("test")
    assert sum(e.label == 1 for e in sst2) == 444  # 1 = positive = "great"
    rte = get_task("rte").load("test")
    assert rte[0].label == 1  # not_entailment = "No"
    assert len(get_task("agnews").load("train")) == 581
