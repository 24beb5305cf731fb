"""The CLI end to end on tiny models: typer's CliRunner for the commands, one real subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmaas_tune.cli import app

runner = CliRunner()

POS = ["it was a great movie", "a good movie , great fun", "great acting and a good plot", "what a great movie",
       "good news , it was good", "a great , great movie", "the acting is good", "it was great fun"]
NEG = ["it was a bad movie", "a terrible movie", "the plot was terrible", "bad acting and a bad ending",
       "it was terrible", "the ending was bad", "a bad , bad movie", "terrible news , no"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data")
    rows = [(s, "1") for s in POS] + [(s, "0") for s in NEG]
    for name in ("train.tsv", "test.tsv"):
        (d / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return d


def _custom(data_dir: Path, model_dir: Path) -> list[str]:
    return ["--task", "custom", "--template", "{sentence} . It was {mask}", "--label-words", "bad,great",
            "--train-file", str(data_dir / "train.tsv"), "--test-file", str(data_dir / "test.tsv"),
            "--model", str(model_dir), "--device", "cpu"]


TINY = ["--budget", "10", "--popsize", "4", "--prompt-length", "2", "--intrinsic-dim", "8", "--k-shot", "2",
        "--eval-every", "4", "--seed", "3"]


def test_tasks_lists_the_seven_paper_tasks() -> None:
    res = runner.invoke(app, ["tasks", "--json"])
    assert res.exit_code == 0, res.output
    names = {row["task"] for row in json.loads(res.stdout)}
    assert names == {"sst2", "yelpp", "agnews", "dbpedia", "mrpc", "rte", "snli"}


def test_fit_unknown_task_is_a_usage_error_without_traceback() -> None:
    res = runner.invoke(app, ["fit", "--task", "sst3"])
    assert res.exit_code == 2
    assert "unknown task 'sst3'" in res.output and "sst2" in res.output
    assert "Traceback" not in res.output


def test_fit_rejects_budget_below_popsize(data_dir: Path, llama_dir: Path) -> None:
    res = runner.invoke(app, ["fit", *_custom(data_dir, llama_dir), "--budget", "3", "--popsize", "4"])
    assert res.exit_code == 2
    assert "--budget (3) is smaller than --popsize (4)" in res.output


def test_evaluate_custom_task_zero_shot(data_dir: Path, roberta_dir: Path) -> None:
    args = ["evaluate", *_custom(data_dir, roberta_dir)]
    args[args.index("{sentence} . It was {mask}")] = "{sentence} . It was {mask} ."
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["n"] == 16 and 0.0 <= payload["value"] <= 1.0 and payload["metric"] == "accuracy"


def test_fit_then_evaluate_run_dir_reproduces_the_recorded_test_metric(data_dir: Path, llama_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    res = runner.invoke(app, ["fit", *_custom(data_dir, llama_dir), *TINY, "--output", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    fitted = json.loads(res.stdout)
    assert fitted["calls"] == 10
    history = (run_dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["calls"] for line in history] == [4, 8, 10]
    res = runner.invoke(app, ["evaluate", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["value"] == fitted["test"]["value"]
    assert again["recorded"]["value"] == fitted["test"]["value"]
    # the run directory refuses to be overwritten by another fit
    res = runner.invoke(app, ["fit", *_custom(data_dir, llama_dir), *TINY, "--output", str(run_dir)])
    assert res.exit_code == 2 and "already holds a run" in res.output


def test_fit_fused_is_stored_and_evaluates_to_the_same_metric(data_dir: Path, llama_dir: Path, tmp_path: Path) -> None:
    """--fused (the opt-in fused Llama layers) is a stored backend setting: the run's config keeps it,
    `evaluate RUN_DIR` scores with it, and a --resume that asks otherwise is refused."""
    run_dir = tmp_path / "run"
    res = runner.invoke(app, ["fit", *_custom(data_dir, llama_dir), *TINY, "--fused", "--output", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    fitted = json.loads(res.stdout)
    assert json.loads((run_dir / "config.json").read_text())["backend"]["fused"] is True
    res = runner.invoke(app, ["evaluate", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["value"] == fitted["test"]["value"]
    plain = tmp_path / "plain"
    res = runner.invoke(app, ["fit", *_custom(data_dir, llama_dir), *TINY, "--output", str(plain), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads((plain / "config.json").read_text())["backend"]["fused"] is False
    # float32: the fused layers score what the model's layers score, so the same run results
    assert json.loads(res.stdout)["test"]["value"] == fitted["test"]["value"]
    res = runner.invoke(app, ["fit", "--resume", str(plain), "--fused"])
    assert res.exit_code == 2 and "--fused" in res.output and "the run has False" in res.output


def test_fit_compile_is_stored_free_on_resume_and_local_only(data_dir: Path, llama_dir: Path, tmp_path: Path) -> None:
    """--compile is a stored backend setting that does not change a float32 run's result; a --resume
    may switch it on (it changes how the layers run, not what they compute); a remote backend refuses it."""
    run_dir = tmp_path / "run"
    res = runner.invoke(app, ["fit", *_custom(data_dir, llama_dir), *TINY, "--compile", "--output", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    compiled = json.loads(res.stdout)
    assert json.loads((run_dir / "config.json").read_text())["backend"]["compile"] is True
    plain = tmp_path / "plain"
    res = runner.invoke(app, ["fit", *_custom(data_dir, llama_dir), *TINY, "--output", str(plain), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["test"]["value"] == compiled["test"]["value"]
    res = runner.invoke(app, ["fit", "--resume", str(plain), "--compile", "--json"])
    assert res.exit_code == 0, res.output  # finished: shows the stored result, no conflict raised
    res = runner.invoke(app, ["fit", *_custom(data_dir, llama_dir), *TINY, "--compile", "--endpoint", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "--compile" in res.output and "lmaas-tune serve" in res.output


def test_fit_with_several_words_per_label_then_evaluate_predict_and_resume(
        data_dir: Path, llama_dir: Path, tmp_path: Path) -> None:
    """`--label-words 'bad|terrible,great|good'`: the run records the grouping, `evaluate RUN_DIR`
    reproduces the recorded metric, `predict` labels by the first word of each label, and a
    `--resume` that names other label words is refused."""
    args = _custom(data_dir, llama_dir)
    args[args.index("bad,great")] = "bad | terrible, great|good"
    run_dir = tmp_path / "run"
    res = runner.invoke(app, ["fit", *args, *TINY, "--output", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    fitted = json.loads(res.stdout)
    assert fitted["calls"] == 10
    assert json.loads((run_dir / "config.json").read_text())["task"]["label_words"] == ["bad|terrible", "great|good"]
    res = runner.invoke(app, ["evaluate", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["value"] == fitted["test"]["value"]
    res = runner.invoke(app, ["predict", str(run_dir), "--input", str(data_dir / "test.tsv"), "--quiet"])
    assert res.exit_code == 0, res.output
    preds = [json.loads(line) for line in res.stdout.splitlines()]
    gold = [line.split("\t")[1] for line in (data_dir / "test.tsv").read_text().splitlines()[1:]]
    assert sum(p["label"] == {"0": "bad", "1": "great"}[g] for p, g in zip(preds, gold)) / len(gold) == \
        pytest.approx(fitted["test"]["accuracy"], abs=1e-12)
    assert all(set(p["probabilities"]) == {"bad", "great"} for p in preds)
    res = runner.invoke(app, ["fit", "--resume", str(run_dir), "--label-words", "bad,great"])
    assert res.exit_code == 2 and "--label-words" in res.output and "the run has" in res.output
    res = runner.invoke(app, ["fit", "--resume", str(run_dir), "--label-words", "bad|terrible,great|good", "--json"])
    assert res.exit_code == 0, res.output  # the same words: nothing changes, the stored result


def test_tasks_lists_the_registered_verbalizers() -> None:
    res = runner.invoke(app, ["tasks", "--json"])
    assert res.exit_code == 0, res.output
    rows = {(r["task"], r["kind"]): r for r in json.loads(res.stdout)}
    assert rows["sst2", "causal"]["label_words"] == ["negative", "positive"]
    assert rows["sst2", "causal"]["verbalizers"]["multi"][0].startswith("negative|bad|")
    assert rows["agnews", "masked"]["verbalizers"]["multi"][3].startswith("Tech|")
    assert rows["rte", "causal"]["verbalizers"] == {}


def test_console_script_runs_as_a_real_process() -> None:
    exe = shutil.which("lmaas-tune") or str(Path(sys.executable).parent / "lmaas-tune")
    proc = subprocess.run([exe, "fit", "--task", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown task 'nope'" in proc.stderr
    proc = subprocess.run([exe, "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--prompt-length" in proc.stdout
