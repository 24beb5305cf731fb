"""`lmaas-tune serve` as a real process, and `fit`/`evaluate --backend remote` against it."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_support import sentiment_task
from resume_support import CliProcess
from typer.testing import CliRunner

from lmaas_tune.cli import app

runner = CliRunner()
TINY = ["--budget", "10", "--popsize", "4", "--prompt-length", "2", "--intrinsic-dim", "8", "--k-shot", "2",
        "--eval-every", "4", "--seed", "3", "--json"]


@pytest.fixture
def token_server(llama_dir: Path) -> Iterator[tuple[CliProcess, str]]:
    proc = CliProcess(["serve", "--model", str(llama_dir), "--device", "cpu", "--port", "0",
                       "--token-env", "SERVE_TEST_TOKEN"], SERVE_TEST_TOKEN="tok-123")
    try:
        line = proc.wait_for("on http://127.0.0.1:", limit_s=180)
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        yield proc, match.group(1)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def test_served_fit_equals_local_fit_then_the_server_stops_cleanly(
        token_server: tuple[CliProcess, str], llama_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server, url = token_server
    task = ["--task", "custom", "--template", "{sentence} . It was {mask}", "--label-words", "bad,great"]
    sentiment_task(tmp_path)
    data = ["--train-file", str(tmp_path / "train.tsv"), "--test-file", str(tmp_path / "test.tsv")]

    res = runner.invoke(app, ["fit", *task, *data, "--model", str(llama_dir), "--device", "cpu", *TINY,
                              "--output", str(tmp_path / "local")])
    assert res.exit_code == 0, res.output
    local = json.loads(res.stdout)

    res = runner.invoke(app, ["fit", *task, *data, "--endpoint", url, *TINY, "--output", str(tmp_path / "remote")])
    assert res.exit_code == 2 and "token" in res.output  # the service wants a token
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-123")
    res = runner.invoke(app, ["fit", *task, *data, "--backend", "remote", "--endpoint", url, "--token-env", "MY_SERVICE_TOKEN",
                              *TINY, "--output", str(tmp_path / "remote")])
    assert res.exit_code == 0, res.output
    remote = json.loads(res.stdout)

    assert (remote["dev"], remote["test"], remote["calls"]) == (local["dev"], local["test"], local["calls"])
    best = [json.loads((tmp_path / d / "best.json").read_text()) for d in ("local", "remote")]
    assert best[0]["z"] == best[1]["z"] and best[0]["projection"] == best[1]["projection"]
    saved = json.loads((tmp_path / "remote" / "config.json").read_text())["backend"]
    assert saved["backend"] == "remote" and saved["endpoints"] == [url] and saved["token_env"] == "MY_SERVICE_TOKEN"
    assert "tok-123" not in (tmp_path / "remote" / "config.json").read_text()

    res = runner.invoke(app, ["evaluate", str(tmp_path / "remote"), "--json"])  # re-scored through the service
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["value"] == remote["test"]["value"]

    server.signal(signal.SIGINT)
    code, _, rest = server.finish(timeout=60)
    assert code == 0, rest
    assert "stopped" in rest


def test_cli_remote_usage_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["fit", "--backend", "remote"])
    assert res.exit_code == 2 and "--endpoint" in res.output
    res = runner.invoke(app, ["fit", "--endpoint", "ftp://nowhere"])
    assert res.exit_code == 2 and "http" in res.output
    res = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "token" in res.output
    res = runner.invoke(app, ["serve", "--token-file", str(tmp_path / "none")])
    assert res.exit_code == 2 and "cannot read" in res.output
