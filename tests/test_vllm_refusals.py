"""What the vLLM backend refuses, through the real ``lmaas-tune`` console script, against real vLLM servers.

Each refusal is one line that names the problem and the fix, with exit code 2 (the setup is
wrong), and it comes before a run directory is made, so nothing is spent or lost; a service that
starts refusing midway (a revoked key) stops the run after its last complete generation, and
``lmaas-tune resume`` finishes it. docs/errors.md lists every case under "vLLM servers" with the id
it has here (the last test checks that the two agree).

Servers: ``vllm_url`` (prompt embeddings on, API key required), ``vllm_plain_url`` (started
without ``--enable-prompt-embeds``; two minutes to start), and :class:`Proxy`, a small reverse
proxy in front of ``vllm_url`` that plays an older vLLM (it drops ``logprob_token_ids`` from the
requests, as a server that does not know the field ignores it) or a server that stops accepting
the key.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import ClientSession, web
from safetensors.torch import save_file

import vllm_support
from remote_support import NEG, POS

pytestmark = pytest.mark.vllm

DOCS = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
LMAAS = shutil.which("lmaas-tune", path=str(Path(sys.executable).parent)) or "lmaas-tune"
KEY_ENV = vllm_support.KEY_ENV

#: case id (docs/errors.md, section "vLLM servers") -> a phrase its one error line must contain
CASES = {
    "vllm-no-prompt-embeds": "restart it with `vllm serve MODEL --enable-prompt-embeds`",
    "vllm-hidden-size": "serves a model of hidden size 576, but narrow",
    "vllm-vocabulary": "serves a model with a vocabulary of 49152 tokens, but wide-vocab",
    "vllm-tokenizer": "tokenizes text differently from",
    "vllm-masked-lm": "is a masked LM; a vLLM server scores the next token of causal LMs only",
    "vllm-no-logprob-token-ids": "ignored `logprob_token_ids`",
    "vllm-label-word-splits": "label word 'mediocre' is 3 tokens",
    "vllm-wrong-key": "refused the API key (HTTP 401); check --token-env",
    "vllm-no-key": "requires an API key (HTTP 401) and none was sent; pass --token-env",
    "vllm-key-revoked": "HTTP 401: Unauthorized; check the token (--token-env)",
    "vllm-deep-prompts": "a vLLM server exposes no hidden states",
}

#: a fit small enough to finish in a minute on a CPU vLLM: 4 generations of 10 candidates, 8 rows each
SMALL = ["--preset", "cpu", "--budget", "40", "--popsize", "10", "--k-shot", "4", "--eval-every", "20", "--seed", "5"]


def lmaas(*args: str, timeout: float = 600, **env: str) -> tuple[int, str]:
    """Run the console script offline; (exit code, stderr)."""
    full = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    full.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env})
    done = subprocess.run([LMAAS, *args], capture_output=True, text=True, env=full, timeout=timeout)
    return done.returncode, done.stderr


def refused(case: str, args: list[str], exit_code: int = 2, **env: str) -> str:
    """Run the CLI; assert the exit code and one error line with the case's phrase. Returns stderr."""
    code, err = lmaas(*args, **env)
    assert code == exit_code, f"{case}: exit {code}\n{err}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"{case}: expected one error line\n{err}"
    assert CASES[case] in errors[0], f"{case}: {CASES[case]!r} not in {errors[0]!r}"
    return err


def sst2_fit(url: str, out: Path, *extra: str) -> list[str]:
    return ["fit", "--task", "sst2", *SMALL, "--backend", "vllm", "--endpoint", url, "--token-env", KEY_ENV,
            "-o", str(out), *extra]


KEY = {KEY_ENV: vllm_support.KEY}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """A reverse proxy on 127.0.0.1 (a free port) in front of ``upstream``, in a thread of its own.

    It forwards every request with its body and its Authorization header. ``strip`` drops
    ``logprob_token_ids`` from JSON request bodies (what a vLLM older than 0.32 does with a field
    it does not know: ignores it); ``refuse_after`` answers ``/v1/completions`` requests after that
    many with vLLM's own 401 (a key revoked midway). ``completions`` counts them.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.strip = False
        self.refuse_after: int | None = None
        self.completions = 0
        self._session: ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/v1/completions":
            self.completions += 1
            if self.refuse_after is not None and self.completions > self.refuse_after:
                return web.json_response({"error": "Unauthorized"}, status=401)
        if self.strip and body:
            doc = json.loads(body)
            if isinstance(doc, dict) and doc.pop("logprob_token_ids", None) is not None:
                body = json.dumps(doc).encode()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "accept")}
        assert self._session is not None
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                         headers=headers) as resp:
            raw = await resp.read()
            return web.Response(body=raw, status=resp.status, content_type=resp.content_type)

    async def _start(self) -> None:
        self._session = ClientSession()
        app = web.Application(client_max_size=256 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def __enter__(self) -> "Proxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


# -- client model directories that do not match the served model --------------------------------------


def _served_dir() -> Path:
    from lmaas_tune.backends.local.models import DEFAULT_MODEL, EMBEDDED, converted_gguf_dir

    return converted_gguf_dir(Path(EMBEDDED.get(DEFAULT_MODEL).path()))


def _client_dir(dst: Path, *, vocab: int, hidden: int) -> Path:
    """The served model's tokenizer, with a config and a random input embedding table of another shape."""
    src = _served_dir()
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "vocab.json", "merges.txt"):
            shutil.copy(f, dst / f.name)
    config = json.loads((src / "config.json").read_text("utf-8"))
    config.update(vocab_size=vocab, hidden_size=hidden)
    if hidden != config.get("num_attention_heads", 0) * config.get("head_dim", 0):
        config.update(num_attention_heads=1, num_key_value_heads=1, head_dim=hidden)  # a valid config of that width
    (dst / "config.json").write_text(json.dumps(config), "utf-8")
    table = torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(0)) * 0.02
    save_file({"model.embed_tokens.weight": table}, str(dst / "model.safetensors"))
    return dst


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("client-models")
    served = json.loads((_served_dir() / "config.json").read_text("utf-8"))
    vocab, hidden = int(served["vocab_size"]), int(served["hidden_size"])
    assert (vocab, hidden) == (49152, 576)  # the phrases in CASES name them
    return {"narrow": _client_dir(root / "narrow", vocab=vocab, hidden=64),
            "wide-vocab": _client_dir(root / "wide-vocab", vocab=vocab + 64, hidden=hidden)}


@pytest.fixture(scope="module")
def small_task(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A custom sentiment task with 8 examples per label and a 16-row test set."""
    d = tmp_path_factory.mktemp("small-task")
    rows = "".join(f"{s}\t1\n" for s in POS) + "".join(f"{s}\t0\n" for s in NEG)
    for name in ("train.tsv", "test.tsv"):
        (d / name).write_text("sentence\tlabel\n" + rows, "utf-8")
    return ["--task", "custom", "--template", "{sentence} . It was {mask}", "--label-words", "bad,great",
            "--train-file", str(d / "train.tsv"), "--test-file", str(d / "test.tsv")]


# -- the refusals -----------------------------------------------------------------------------------------


def test_a_server_without_prompt_embeddings(vllm_plain_url: str, tmp_path: Path) -> None:
    err = refused("vllm-no-prompt-embeds", sst2_fit(vllm_plain_url, tmp_path / "run"), **KEY)
    assert vllm_plain_url in err
    assert not (tmp_path / "run").exists()  # refused on connecting: no run directory, no call spent


def test_a_client_model_that_is_not_the_served_one(vllm_url: str, mismatched: dict[str, Path], llama_dir: Path,
                                                   tmp_path: Path) -> None:
    refused("vllm-hidden-size", sst2_fit(vllm_url, tmp_path / "a", "--model", str(mismatched["narrow"])), **KEY)
    err = refused("vllm-vocabulary", sst2_fit(vllm_url, tmp_path / "b", "--model", str(mismatched["wide-vocab"])), **KEY)
    assert "has 49216; give --model the directory the server was started on" in err
    err = refused("vllm-tokenizer", sst2_fit(vllm_url, tmp_path / "c", "--model", str(llama_dir)), **KEY)
    assert "give --model the directory the server was started on" in err
    assert not any((tmp_path / n).exists() for n in "abc")


def test_a_masked_lm_is_refused_before_any_request(roberta_dir: Path, tmp_path: Path) -> None:
    # nothing listens at this endpoint: a request would fail with "cannot connect" (exit 1)
    nowhere = f"http://127.0.0.1:{_free_port()}"
    err = refused("vllm-masked-lm", sst2_fit(nowhere, tmp_path / "run", "--model", str(roberta_dir)), **KEY)
    assert "use --backend local" in err and "cannot connect" not in err


def test_a_server_that_ignores_logprob_token_ids(vllm_url: str, tmp_path: Path) -> None:
    with Proxy(vllm_url) as older:
        older.strip = True
        err = refused("vllm-no-logprob-token-ids", sst2_fit(older.url, tmp_path / "run"), **KEY)
    assert "needs vLLM 0.32 or newer" in err and older.completions == 1  # the probe, and nothing after it
    assert not (tmp_path / "run").exists()


def test_a_label_word_of_several_tokens(vllm_url: str, tmp_path: Path) -> None:
    err = refused("vllm-label-word-splits", sst2_fit(vllm_url, tmp_path / "run", "--label-words", "negative,mediocre"),
                  **KEY)
    assert "['Ġmedi', 'oc', 're']" in err and "--label-words" in err
    assert not (tmp_path / "run").exists()  # refused while preparing the data, before the run directory


def test_a_wrong_or_missing_api_key(vllm_url: str, tmp_path: Path) -> None:
    err = refused("vllm-wrong-key", sst2_fit(vllm_url, tmp_path / "a"), **{KEY_ENV: "not-the-key"})
    assert "VLLM_API_KEY" in err
    args = [a for a in sst2_fit(vllm_url, tmp_path / "b") if a not in ("--token-env", KEY_ENV)]
    refused("vllm-no-key", args)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_deep_prompts(vllm_url: str, tmp_path: Path) -> None:
    err = refused("vllm-deep-prompts", sst2_fit(vllm_url, tmp_path / "run", "--method", "bbtv2"), **KEY)
    assert "use --method bbt" in err
    assert not (tmp_path / "run").exists()


def test_a_key_revoked_midway_stops_the_run_and_resume_finishes_it(vllm_url: str, small_task: list[str],
                                                                   tmp_path: Path) -> None:
    run = tmp_path / "run"
    with Proxy(vllm_url) as proxy:
        # the connection probe and generation 1 pass (4 requests: the scheduler sends a population in
        # max_in_flight chunks), then 3 of generation 2's; its last one gets a 401
        proxy.refuse_after = 8
        args = ["fit", *small_task, *SMALL, "--backend", "vllm", "--endpoint", proxy.url, "--token-env", KEY_ENV,
                "-o", str(run)]
        err = refused("vllm-key-revoked", args, **KEY)
        assert f"continue it with: lmaas-tune fit --resume {run}" in err
        doc = json.loads((run / "checkpoint.json").read_text("utf-8"))
        spent = doc["ledger"]["calls"]
        assert 10 <= spent < 40 and not (run / "result.json").exists()

        proxy.refuse_after = None  # the key works again
        code, err = lmaas("resume", str(run), "--json", **KEY)
    assert code == 0, err
    result = json.loads((run / "result.json").read_text("utf-8"))
    assert result["calls"] == 40
    generations = [json.loads(line)["generation"] for line in (run / "history.jsonl").read_text("utf-8").splitlines()]
    assert generations == [1, 2, 3, 4]  # none lost, none repeated


# -- the table ---------------------------------------------------------------------------------------------


def test_docs_errors_lists_every_vllm_case_with_its_message() -> None:
    text = DOCS.read_text("utf-8")
    section = text.split("\n## vLLM servers", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): line for line in section.splitlines() if (m := re.match(r"\|\s*`([a-z0-9-]+)`", line))}
    assert set(rows) == set(CASES), f"docs/errors.md and the tests disagree: {set(rows) ^ set(CASES)}"
    for case, phrase in CASES.items():
        assert phrase.replace("|", "\\|") in rows[case], f"{case}: docs/errors.md does not show {phrase!r}"
