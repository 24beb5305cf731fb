"""`lmaas-tune predict` on a tuned tiny run reproduces what `evaluate` reports; presets in the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from remote_support import sentiment_task
from typer.testing import CliRunner

from lmaas_tune.cli import app
from lmaas_tune.errors import DataError
from lmaas_tune.tuning.predict import parse_inputs

runner = CliRunner()


@pytest.fixture(scope="module", params=["bbt", "bbtv2"])
def run_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, roberta_dir: Path) -> Path:
    data = tmp_path_factory.mktemp("data")
    sentiment_task(data)
    out = tmp_path_factory.mktemp("runs") / "run"
    res = runner.invoke(app, ["fit", "--task", "custom", "--template", "{sentence} . It was {mask}",
                              "--label-words", "bad,great", "--train-file", str(data / "train.tsv"),
                              "--test-file", str(data / "test.tsv"), "--model", str(roberta_dir), "--device", "cpu",
                              "--method", request.param, "--budget", "12", "--popsize", "4", "--prompt-length", "2",
                              "--intrinsic-dim", "4", "--k-shot", "4", "--eval-every", "4", "--no-baseline",
                              "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out


def test_predict_reproduces_the_evaluated_accuracy(run_dir: Path, tmp_path: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    test_file = Path(config["task"]["test"])
    ev = runner.invoke(app, ["evaluate", str(run_dir), "--device", "cpu", "--json"])
    assert ev.exit_code == 0, ev.output
    accuracy = json.loads(ev.stdout)["accuracy"]

    out = tmp_path / "predictions.jsonl"
    res = runner.invoke(app, ["predict", str(run_dir), "--input", str(test_file), "--output", str(out),
                              "--batch-size", "5", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    gold = [line.split("\t")[1] for line in test_file.read_text().splitlines()[1:]]
    assert len(preds) == len(gold)
    words = {"0": "bad", "1": "great"}
    assert sum(p["label"] == words[g] for p, g in zip(preds, gold)) / len(gold) == pytest.approx(accuracy, abs=1e-12)
    for p in preds:
        assert set(p["probabilities"]) == {"bad", "great"} and sum(p["probabilities"].values()) == pytest.approx(1.0)
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)

    # plain lines on standard input, JSON lines to standard output, the same labels
    sentences = "".join(line.split("\t")[0] + "\n" for line in test_file.read_text().splitlines()[1:])
    res = runner.invoke(app, ["predict", str(run_dir), "--device", "cpu", "--quiet"], input=sentences)
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["label"] for line in res.stdout.splitlines()] == [p["label"] for p in preds]


def test_parse_inputs_formats(tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    assert parse_inputs("a film\n\nanother\n", task) == [{"sentence": "a film"}, {"sentence": "another"}]
    assert parse_inputs('{"sentence": "x", "id": 3}\n', task) == [{"sentence": "x"}]
    assert parse_inputs("id,sentence\n1,\"a, b\"\n", task, "csv") == [{"sentence": "a, b"}]
    with pytest.raises(DataError, match="no 'sentence' column"):
        parse_inputs("text\tlabel\nx\t1\n", task, "tsv")


def test_help_lists_the_presets_and_methods() -> None:
    res = runner.invoke(app, ["fit", "--help"], terminal_width=400)
    assert res.exit_code == 0
    for name in ("paper", "cpu", "bbt", "bbt-icml", "bbtv2"):
        assert name in res.stdout
    res = runner.invoke(app, ["predict", "--help"])
    assert res.exit_code == 0 and "--batch-size" in res.stdout
