"""Every bad input of docs/errors.md, through the CLI: its exit code, and a one-line message that
names the problem (and no traceback).

Each case has an id that docs/errors.md lists; the last test checks the table and this file agree.
Remote cases run a real service on 127.0.0.1 in a background thread.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import web
from remote_support import NEG, POS, ThreadedServer
from typer.testing import CliRunner

from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.cli import app

runner = CliRunner()
DOCS = Path(__file__).resolve().parent.parent / "docs" / "errors.md"

#: case id -> a phrase its message must contain (docs/errors.md shows the whole message)
CASES = {
    "unknown-task": "unknown task 'sst3'",
    "unknown-model": "could not load model 'no-such-model'",
    "missing-model-path": "model path './no/such/dir' does not exist",
    "template-no-mask": "must contain exactly one {mask} slot",
    "template-field-not-in-data": "missing column(s) ['text']",
    "label-words-repeat": "label words repeat: ['bad']",
    "label-word-in-two-labels": "label words repeat: ['good']; give each word once, to one label only",
    "label-without-words": "label 2 of ['bad', '', 'great'] has no label words",
    "label-words-count": "task 'sst2' has 2 labels but the label words 'negative,bad,positive' name 3",
    "verbalizer-unknown": "task 'sst2' has no verbalizer 'many'; registered: multi",
    "verbalizer-and-label-words": "give --label-words or --verbalizer, not both",
    "label-words-collide": "start with the same token",
    "label-word-splits": "splits into 8 tokens",
    "data-file-missing": "not found",
    "data-file-empty": "is empty",
    "data-file-no-rows": "holds no examples",
    "data-missing-column": "missing column(s) ['label']",
    "data-not-utf8": "is not UTF-8",
    "labels-outside-verbalizer": "found 3 label value(s)",
    "label-not-in-labels": "has label '2', not one of ['0', '1']",
    "too-few-per-class": "too few training examples for 9-shot",
    "input-too-long-error": "longer than the model limit of 128 tokens",
    "input-too-long-dropped": "dropped 1 of 4 train examples longer than the model limit",
    "calibration-does-not-fit": "the content-free inputs of calibration do not fit the model limit of 128 tokens",
    "popsize-below-2": "--popsize must be at least 2",
    "budget-below-popsize": "--budget (3) is smaller than --popsize (4)",
    "sigma-not-finite": "--sigma and --alpha must be positive finite numbers",
    "non-finite-losses": "had a non-finite loss",
    "endpoints-differ": "every endpoint must serve the same model",
    "hidden-size-mismatch": "hidden_size 32 vs 16",
    "protocol-mismatch": "speaks protocol version 2",
    "wrong-token": "invalid bearer token",
    "token-env-unset": "--token-env NO_SUCH_TOKEN_VAR: that environment variable is not set",
    "unreachable-endpoint": "cannot connect",
    "output-holds-a-run": "already holds a run; continue it with `lmaas-tune fit --resume",
    "output-not-empty": "is not empty and holds no run",
    "resume-not-a-run": "is not a run directory",
    "resume-conflict": "--budget 12 (the run has 10)",
    "on-long-unknown": "--on-long must be drop or error",
    "prompt-init-deep": "--prompt-init is for --method bbt",
    "optimizer-deep": "--optimizer cma-cobyla is for --method bbt",
    "cma-fraction-range": "--cma-fraction must be more than 0 and at most 1",
    "dev-candidates-unknown": "--dev-candidates must be one of best, best+mean",
    "column-malformed": "--column expects FIELD=COLUMN",
    "device-unavailable": "no such CUDA device",
}

TINY = ["--budget", "10", "--popsize", "4", "--prompt-length", "2", "--intrinsic-dim", "6", "--k-shot", "2",
        "--eval-every", "4", "--seed", "3"]


def check(case: str, args: list[str], exit_code: int, **env: str) -> str:
    """Run the CLI; assert the exit code and that the error line names the problem. Returns all output."""
    assert case in CASES
    res = runner.invoke(app, args, env=env or None)
    out = res.output
    assert res.exit_code == exit_code, f"{case}: exit {res.exit_code}\n{out}\n{res.exception!r}"
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"{case}: expected one error line\n{out}"
    assert CASES[case] in errors[0], f"{case}: {CASES[case]!r} not in {errors[0]!r}"
    return out


def write(path: Path, rows: list[tuple[str, str]], header: str = "sentence\tlabel") -> Path:
    path.write_text(header + "\n" + "".join(f"{s}\t{y}\n" for s, y in rows), "utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data")
    good = [(s, "1") for s in POS[:4]] + [(s, "0") for s in NEG[:4]]
    write(d / "train.tsv", good)
    write(d / "test.tsv", good)
    (d / "empty.tsv").write_text("")
    (d / "header-only.tsv").write_text("sentence\tlabel\n")
    write(d / "no-label.tsv", [(s, "x") for s, _ in good], header="sentence\tclass")
    (d / "latin1.tsv").write_bytes("sentence\tlabel\ncaf\xe9 au lait\t1\n".encode("latin-1"))
    write(d / "three-labels.tsv", good + [("so so", "2")])
    write(d / "long.tsv", good[:-1] + [(" ".join(["great"] * 200), "0")])
    return d


def task_args(data: Path, model: Path | None = None, *, train: str = "train.tsv", template: str = "{sentence} . It was {mask}",
              words: str = "bad,great") -> list[str]:
    args = ["--task", "custom", "--template", template, "--label-words", words, "--train-file", str(data / train),
            "--test-file", str(data / "test.tsv"), "--device", "cpu"]
    return args + (["--model", str(model)] if model else [])


# -- names, templates, label words ------------------------------------------------------------------


def test_unknown_names(data: Path) -> None:
    check("unknown-task", ["fit", "--task", "sst3"], 2)
    check("unknown-model", ["evaluate", *task_args(data), "--model", "no-such-model"], 2)
    check("missing-model-path", ["evaluate", *task_args(data), "--model", "./no/such/dir"], 2)


def test_templates_and_label_words(data: Path, llama_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    check("template-no-mask", ["evaluate", *task_args(data, llama_dir, template="{sentence} It was")], 2)
    check("template-field-not-in-data", ["evaluate", *task_args(data, llama_dir, template="{text} It was {mask}")], 2)
    check("label-words-repeat", ["evaluate", *task_args(data, llama_dir, words="bad,bad")], 2)
    check("label-words-collide", ["evaluate", *task_args(data, llama_dir, words="great,greatest")], 2)
    # several words per label: ',' separates labels, '|' the words of one label
    check("label-word-in-two-labels", ["evaluate", *task_args(data, llama_dir, words="bad|good,great|good")], 2)
    check("label-without-words", ["evaluate", *task_args(data, llama_dir, words="bad,,great")], 2)
    check("label-words-count", ["evaluate", "--task", "sst2", "--label-words", "negative,bad,positive"], 2)
    check("verbalizer-unknown", ["evaluate", "--task", "sst2", "--verbalizer", "many"], 2)
    check("verbalizer-and-label-words", ["evaluate", "--task", "sst2", "--verbalizer", "multi", "--label-words",
                                         "bad,great"], 2)
    with caplog.at_level(logging.WARNING, logger="lmaas_tune"):  # a warning, not an error: the run goes on
        res = runner.invoke(app, ["evaluate", *task_args(data, llama_dir, words="bad,fantastic"), "--json"])
    assert res.exit_code == 0, res.output
    assert CASES["label-word-splits"] in caplog.text and "reading its first token 'Ġf'" in caplog.text


# -- data files ---------------------------------------------------------------------------------------


def test_data_files(data: Path, llama_dir: Path) -> None:
    check("data-file-missing", ["fit", *task_args(data, llama_dir, train="nope.tsv"), *TINY], 2)
    check("data-file-empty", ["fit", *task_args(data, llama_dir, train="empty.tsv"), *TINY], 2)
    check("data-file-no-rows", ["fit", *task_args(data, llama_dir, train="header-only.tsv"), *TINY], 2)
    check("data-missing-column", ["fit", *task_args(data, llama_dir, train="no-label.tsv"), *TINY], 2)
    check("data-not-utf8", ["fit", *task_args(data, llama_dir, train="latin1.tsv"), *TINY], 2)
    check("labels-outside-verbalizer", ["fit", *task_args(data, llama_dir, train="three-labels.tsv"), *TINY], 2)
    check("label-not-in-labels", ["fit", *task_args(data, llama_dir, train="three-labels.tsv"), "--labels", "0,1", *TINY], 2)
    check("too-few-per-class", ["fit", *task_args(data, llama_dir), *TINY, "--k-shot", "9"], 2)


def test_inputs_longer_than_the_model(data: Path, llama_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = ["fit", *task_args(data, llama_dir, train="long.tsv"), *TINY]
    check("input-too-long-error", [*args, "--on-long", "error", "-o", str(tmp_path / "a")], 2)
    assert not (tmp_path / "a").exists()  # refused before a run directory was made
    with caplog.at_level(logging.WARNING, logger="lmaas_tune"):
        res = runner.invoke(app, [*args, "-o", str(tmp_path / "b"), "--json"])  # the default: drop and count
    assert res.exit_code == 0, res.output
    assert CASES["input-too-long-dropped"] in caplog.text
    assert json.loads((tmp_path / "b" / "result.json").read_text())["dropped"] == {"train": 1, "dev": 0}
    long_template = "{sentence} " + "and so on " * 50 + "It was {mask}"  # too long even for an empty input
    check("calibration-does-not-fit", ["fit", *task_args(data, llama_dir, template=long_template), *TINY, "--calibrate",
                                       "-o", str(tmp_path / "c")], 2)
    assert not (tmp_path / "c").exists()


# -- tuning settings ----------------------------------------------------------------------------------


def test_tuning_settings(data: Path, llama_dir: Path) -> None:
    check("popsize-below-2", ["fit", *task_args(data, llama_dir), "--popsize", "1"], 2)
    check("budget-below-popsize", ["fit", *task_args(data, llama_dir), "--budget", "3", "--popsize", "4"], 2)
    check("sigma-not-finite", ["fit", *task_args(data, llama_dir), "--sigma", "inf"], 2)
    check("on-long-unknown", ["fit", *task_args(data, llama_dir), "--on-long", "truncate"], 2)
    check("prompt-init-deep", ["fit", *task_args(data, llama_dir), "--method", "bbtv2", "--prompt-init", "Review:"], 2)
    check("optimizer-deep", ["fit", *task_args(data, llama_dir), "--method", "bbtv2", "--optimizer", "cma-cobyla"], 2)
    check("cma-fraction-range", ["fit", *task_args(data, llama_dir), "--optimizer", "cma-cobyla", "--cma-fraction", "0"], 2)
    check("dev-candidates-unknown", ["fit", *task_args(data, llama_dir), "--dev-candidates", "centre"], 2)
    check("column-malformed", ["fit", *task_args(data, llama_dir), "--column", "sentence"], 2)
    check("device-unavailable", ["evaluate", *task_args(data, llama_dir), "--device", "cuda:99"], 2)


@pytest.fixture(scope="module")
def nan_model_dir(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a broken output layer: every logit is NaN."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(llama_dir))
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan-llama")
    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(llama_dir)).save_pretrained(str(path))
    return path


def test_non_finite_losses_stop_the_run_with_a_resume_hint(data: Path, nan_model_dir: Path, tmp_path: Path) -> None:
    out = check("non-finite-losses", ["fit", *task_args(data, nan_model_dir), *TINY, "-o", str(tmp_path / "r")], 1)
    assert "every candidate of generation 1" in out and "--resume" in out


# -- run directories ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(data: Path, llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    res = runner.invoke(app, ["fit", *task_args(data, llama_dir), *TINY, "-o", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    return run_dir


def test_run_directories(data: Path, llama_dir: Path, finished_run: Path, tmp_path: Path) -> None:
    check("output-holds-a-run", ["fit", *task_args(data, llama_dir), *TINY, "-o", str(finished_run)], 2)
    (tmp_path / "notes.txt").write_text("mine")
    check("output-not-empty", ["fit", *task_args(data, llama_dir), *TINY, "-o", str(tmp_path)], 2)
    check("resume-not-a-run", ["fit", "--resume", str(tmp_path / "nothing")], 2)
    check("resume-conflict", ["fit", "--resume", str(finished_run), "--budget", "12"], 2)


# -- remote services ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def narrow_backend(tmp_path_factory: pytest.TempPathFactory) -> LocalBackend:
    """A tiny Llama with hidden size 16 (the other fixtures have 32)."""
    import asyncio

    from conftest import causal_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = causal_tokenizer(bos=True)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("narrow-llama")
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    backend = LocalBackend.load(str(path), device="cpu", dtype="float32")
    yield backend
    asyncio.run(backend.aclose())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@web.middleware
async def _protocol_two(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await handler(request)
    if request.path == "/v1/info":
        body = json.loads(response.body)
        return web.json_response({**body, "protocol": 2})
    return response


def test_remote_services(data: Path, llama_backend: LocalBackend, gpt2_backend: LocalBackend,
                         narrow_backend: LocalBackend, finished_run: Path) -> None:
    fit = ["fit", *task_args(data), *TINY]
    with ThreadedServer(llama_backend) as a, ThreadedServer(gpt2_backend) as b:
        check("endpoints-differ", [*fit, "--endpoint", a.url, "--endpoint", b.url], 2)
    with ThreadedServer(narrow_backend) as narrow:
        check("hidden-size-mismatch", ["evaluate", str(finished_run), "--endpoint", narrow.url], 2)
    with ThreadedServer(llama_backend, middlewares=(_protocol_two,)) as newer:
        check("protocol-mismatch", [*fit, "--endpoint", newer.url], 2)
    with ThreadedServer(llama_backend, token="right-token") as locked:
        check("wrong-token", [*fit, "--endpoint", locked.url, "--token-env", "MY_TOKEN"], 2, MY_TOKEN="wrong-token")
        check("token-env-unset", [*fit, "--endpoint", locked.url, "--token-env", "NO_SUCH_TOKEN_VAR"], 2)
    check("unreachable-endpoint", [*fit, "--endpoint", f"http://127.0.0.1:{_closed_port()}"], 1)


# -- the table ---------------------------------------------------------------------------------------------


def test_docs_errors_table_lists_every_case_with_its_message() -> None:
    text = DOCS.read_text("utf-8").split("\n## ", 1)[0]  # the first table; later sections have tests of their own
    rows = {m.group(1): line for line in text.splitlines() if (m := re.match(r"\|\s*`([a-z0-9-]+)`", line))}
    assert set(rows) == set(CASES), f"docs/errors.md and the tests disagree: {set(rows) ^ set(CASES)}"
    for case, phrase in CASES.items():
        assert phrase.replace("|", "\\|") in rows[case], f"{case}: docs/errors.md does not show {phrase!r}"
