"""The scripts in examples/ run as written, on the tiny Llama instead of the embedded model.

Each runs in this process with ``runpy`` (as ``__main__``, its arguments or environment set as a
user would), so only the budget is cut: the real SST-2 data, the real test set, a real service
on 127.0.0.1 for the remote one. (The web service has its own test: test_web_service_example.py.)
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script), *args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")


def test_minimal_example(llama_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert len((EXAMPLES / "minimal.py").read_text().splitlines()) < 25
    monkeypatch.setenv("LMAAS_TUNE_MODEL", str(llama_dir))
    monkeypatch.setenv("LMAAS_TUNE_BUDGET", "20")  # one generation of the CPU preset's 20
    _run("minimal.py", monkeypatch)
    assert re.fullmatch(r"test accuracy 0\.\d{4}\n", capsys.readouterr().out)


def test_tune_sst2_example(llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    _run("tune_sst2.py", monkeypatch, "--model", str(llama_dir), "--budget", "20", "--output", str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert "calls 20/20" in out and "tuned prompt: test accuracy" in out and "manual prompt: test accuracy" in out
    assert (tmp_path / "run" / "result.json").is_file()


def test_remote_fit_example(llama_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _run("remote_fit.py", monkeypatch, "--model", str(llama_dir), "--budget", "20", "--compare")
    out = capsys.readouterr().out
    assert "serving on http://127.0.0.1:" in out and "remote: dev accuracy" in out and "local: dev accuracy" in out
    assert "same best prompt and dev metric: True" in out
