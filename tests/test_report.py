"""`lmaas-tune report` on three tiny runs (three seeds): the table's numbers, JSON, and the PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_cli import TINY, _custom
from typer.testing import CliRunner

from lmaas_tune.cli import app
from lmaas_tune.runs.reports import plot_runs, read_runs

runner = CliRunner()
SEEDS = (3, 4, 5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> list[Path]:
    """Three finished fits of the tiny Llama on a 16-sentence task, seeds 3, 4 and 5 (10 calls each)."""
    root = tmp_path_factory.mktemp("report-runs")
    data = root / "data"
    data.mkdir()
    from test_cli import NEG, POS

    rows = [(s, "1") for s in POS] + [(s, "0") for s in NEG]
    for name in ("train.tsv", "test.tsv"):
        (data / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    dirs = []
    for seed in SEEDS:
        args = [*TINY]
        args[args.index("--seed") + 1] = str(seed)
        run_dir = root / f"seed{seed}"
        res = runner.invoke(app, ["fit", *_custom(data, llama_dir), *args, "--output", str(run_dir), "--quiet"])
        assert res.exit_code == 0, res.output
        dirs.append(run_dir)
    return dirs


def _expected(run_dir: Path) -> dict[str, Any]:
    """The numbers the report must show, read straight from the run's files."""
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    result = json.loads((run_dir / "result.json").read_text())
    return {"calls": history[-1]["calls"], "best_train_loss": min(h["best_loss"] for h in history),
            "best_dev": result["dev"], "test": result["test"]["value"],
            "manual_test": result["manual_prompt_test"]["value"], "wall_time_s": result["wall_time_s"],
            "calls_per_s": history[-1]["calls_per_s"], "retries": result["ledger"]["retries"],
            "history": history}


def test_report_json_numbers(runs: list[Path], tmp_path: Path) -> None:
    png = tmp_path / "plots" / "runs.png"
    res = runner.invoke(app, ["report", *map(str, runs), "--format", "json", "--output", str(png)])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["plot"] == str(png) and png.is_file()
    assert [Path(r["run_dir"]).name for r in payload["runs"]] == ["seed3", "seed4", "seed5"]
    for row, run_dir, seed in zip(payload["runs"], runs, SEEDS):
        want = _expected(run_dir)
        assert (row["task"], row["method"], row["seed"], row["status"]) == ("custom", "bbt", seed, "finished")
        assert row["model"] and row["metric"] == "accuracy"
        assert (row["calls"], row["budget"], row["retries"]) == (10, 10, want["retries"])
        for key in ("best_train_loss", "best_dev", "test", "manual_test", "wall_time_s", "calls_per_s"):
            assert row[key] == pytest.approx(want[key]), key
        assert row["series"]["calls"] == [h["calls"] for h in want["history"]] == [4, 8, 10]


def test_report_table_shows_each_run(runs: list[Path], tmp_path: Path) -> None:
    res = runner.invoke(app, ["report", *map(str, runs), "--output", str(tmp_path / "r.png")], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    text = res.stdout
    for run_dir in runs:
        want = _expected(run_dir)
        line = next(ln for ln in text.splitlines() if run_dir.name in ln)
        for cell in ("custom", "bbt", "10/10", f"{want['best_train_loss']:.4f}", f"{want['best_dev']:.4f}",
                     f"{want['test']:.4f}", f"{want['manual_test']:.4f}", f"{want['wall_time_s']:.1f} s",
                     f"{want['calls_per_s']:.2f}", "finished"):
            assert cell in line, (cell, line)
    assert "best train loss" in text and f"plot: {tmp_path / 'r.png'}" in text


def test_plot_has_one_line_per_run_with_the_runs_data(runs: list[Path], tmp_path: Path) -> None:
    plot = plot_runs(read_runs(runs), tmp_path / "report.png")
    with Image.open(plot.path) as img:
        assert img.format == "PNG" and img.size == (plot.width, plot.height) == (1100, 420)
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    ink = (pixels < 250).any(axis=1).mean()
    assert 0.02 < ink < 0.6, f"{ink:.3f} of the pixels are not white"
    assert len(np.unique(pixels, axis=0)) > 20  # lines in several colours, text, grid: not a blank canvas

    loss, dev = plot.panels
    assert loss.title == "best train loss" and dev.title == "dev accuracy"
    for panel in (loss, dev):
        assert [line.label for line in panel.lines] == ["seed3", "seed4", "seed5"]
    for run_dir, loss_line, dev_line in zip(runs, loss.lines, dev.lines):
        history = _expected(run_dir)["history"]
        assert loss_line.x == tuple(float(h["calls"]) for h in history)
        assert loss_line.y == pytest.approx([h["best_loss"] for h in history])
        checks = [h for h in history if h["dev_metric"] is not None]
        assert dev_line.x == tuple(float(h["calls"]) for h in checks) == (4.0, 8.0, 10.0)
        assert dev_line.y == pytest.approx([h["dev_metric"] for h in checks])
    assert len({line.y for line in loss.lines}) == 3  # three seeds, three different curves


def test_report_on_a_directory_that_is_no_run_is_one_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["report", str(tmp_path), "--no-plot"])
    assert res.exit_code == 2
    assert "is not a run directory" in res.output and "Traceback" not in res.output
