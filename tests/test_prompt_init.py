"""The initial prompt p0 (``--prompt-init``): p = A z + p0 with p0 a text's token embeddings.

On tiny real models: what p0 is, that every rebuild of the best prompt includes it (run directory,
``FitResult.prompt()``, ``evaluate``), that a remote fit through a real service equals the local
one, that an interrupted run resumes to the same result, and the errors.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from remote_support import WrappedBackend, served, sentiment_task
from resume_support import assert_same_outcome
from test_remote_fit import assert_same_fit, fit
from typer.testing import CliRunner

from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.remote.client import RemoteBackend
from lmaas_tune.cli import app
from lmaas_tune.methods import TuneConfig
from lmaas_tune.errors import ConfigError
from lmaas_tune.tuning.evaluation import evaluate_prompt
from lmaas_tune.methods import text_prompt
from lmaas_tune.projection import Projection
from lmaas_tune.tuning.tuner import BlackBoxTuner, GenerationReport
from lmaas_tune.tuning.workflows import SavedRun

TEXT = "is it good or bad ?"
CFG = TuneConfig(prompt_length=8, intrinsic_dim=6, popsize=6, budget=30, k_shot=4, eval_every=12, seed=7,
                 prompt_init=TEXT)


def _rows(backend: LocalBackend, text: str) -> np.ndarray:
    ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
    return backend.model.get_input_embeddings().weight.detach().float().numpy()[ids]


def test_text_prompt_repeats_the_text_to_the_prompt_length_and_cuts_it() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(text_prompt(rows, 7), rows[[0, 1, 2, 0, 1, 2, 0]])
    np.testing.assert_array_equal(text_prompt(rows, 2), rows[:2])
    with pytest.raises(ConfigError, match="has no tokens"):
        text_prompt(np.zeros((0, 2), np.float32), 4, " ")


@pytest.mark.parametrize("model", ["llama", "masked"])
async def test_embed_text_is_the_input_embedding_rows_locally_and_through_a_service(
        request: pytest.FixtureRequest, model: str) -> None:
    backend: LocalBackend = request.getfixturevalue(f"{model}_backend")
    want = _rows(backend, TEXT)
    assert want.shape[0] >= 3
    np.testing.assert_array_equal(await backend.embed_text(TEXT), want)
    async with served(backend) as server, RemoteBackend([server.url]) as remote:
        np.testing.assert_array_equal(await remote.embed_text(TEXT), want)


async def test_a_fit_starts_from_p0_and_every_rebuild_of_its_prompt_includes_it(llama_backend: LocalBackend,
                                                                                tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    run_dir = tmp_path / "run"
    seen: list[np.ndarray] = []

    class Recording(WrappedBackend):
        async def score(self, prompts: np.ndarray | None, batch: object) -> np.ndarray:
            if prompts is not None:
                seen.append(prompts)
            return await self.inner.score(prompts, batch)  # type: ignore[arg-type]

        async def embed_text(self, text: str) -> np.ndarray:
            return await self.inner.embed_text(text)

    result = await BlackBoxTuner(task, Recording(llama_backend), CFG, run_dir=run_dir).fit()
    p0 = text_prompt(_rows(llama_backend, TEXT), CFG.prompt_length)
    np.testing.assert_array_equal(np.load(run_dir / "initial_prompt.npy"), p0)
    # the first population is centred on p0 (CMA-ES starts at z = 0): its mean minus p0 is A times the mean z
    first = seen[0]
    mean_z = np.linalg.lstsq(Projection(result.projection).matrix.T,
                             (first.mean(0) - p0).reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(Projection(result.projection)(mean_z)[0] + p0, first.mean(0), atol=1e-5)

    best = json.loads((run_dir / "best.json").read_text())
    assert best["initial_prompt"] == "initial_prompt.npy"
    stored = np.load(run_dir / "best_prompt.npy")
    np.testing.assert_allclose(stored, Projection(result.projection)(result.best_z)[0] + p0, rtol=1e-6)
    np.testing.assert_array_equal(result.prompt(), stored)
    assert result.test is not None
    evaluated = await evaluate_prompt(llama_backend, task, task.load("test"), result.prompt())
    assert evaluated.predictions == result.test.predictions and evaluated.value == result.test.value

    zeros = await BlackBoxTuner(task, llama_backend, CFG.with_overrides(prompt_init="")).fit()
    assert zeros.initial_prompt is None and not np.array_equal(zeros.prompt(), result.prompt())


async def test_remote_fit_with_p0_equals_local_fit(llama_backend: LocalBackend, tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    local = await fit(task, llama_backend, CFG, concurrency=1)
    async with served(llama_backend) as server, RemoteBackend([server.url], upload="projection") as remote:
        remote_fit = await fit(task, remote, CFG, concurrency=4)
    assert_same_fit(remote_fit, local)
    np.testing.assert_array_equal(remote_fit[0].initial_prompt, local[0].initial_prompt)


async def test_a_cancelled_fit_with_p0_resumes_to_the_uninterrupted_result(llama_backend: LocalBackend,
                                                                           tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole = await BlackBoxTuner(task, llama_backend, CFG, run_dir=whole_dir).fit()
    second = asyncio.Event()

    def watch(event: object) -> None:
        if isinstance(event, GenerationReport) and event.generation == 2:
            second.set()

    job = asyncio.ensure_future(BlackBoxTuner(task, llama_backend, CFG, run_dir=cut_dir, callbacks=[watch]).fit())
    await second.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    resumed = await BlackBoxTuner(task, llama_backend, CFG, run_dir=cut_dir).fit(resume=True)
    np.testing.assert_array_equal(resumed.best_z, whole.best_z)
    np.testing.assert_array_equal(resumed.prompt(), whole.prompt())
    assert_same_outcome(cut_dir, whole_dir)
    np.testing.assert_array_equal(np.load(cut_dir / "initial_prompt.npy"), np.load(whole_dir / "initial_prompt.npy"))


async def test_p0_errors_name_the_option(llama_backend: LocalBackend, tmp_path: Path) -> None:
    task = sentiment_task(tmp_path)
    with pytest.raises(ConfigError, match="--prompt-init is for --method bbt"):
        CFG.with_overrides(method="bbtv2")
    with pytest.raises(ConfigError, match="cannot embed text for --prompt-init"):
        await BlackBoxTuner(task, WrappedBackend(llama_backend), CFG).fit()


def test_cli_fit_takes_prompt_init_and_resume_refuses_another(llama_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = [("a great movie", 1), ("good fun", 1), ("a good plot", 1), ("great acting", 1),
            ("a bad movie", 0), ("terrible", 0), ("bad acting", 0), ("a terrible plot", 0)]
    for name in ("train.tsv", "test.tsv"):
        (data / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    run_dir = tmp_path / "run"
    args = ["fit", "--task", "custom", "--template", "{sentence} . It was {mask}", "--label-words", "bad,great",
            "--train-file", str(data / "train.tsv"), "--test-file", str(data / "test.tsv"), "--model", str(llama_dir),
            "--device", "cpu", "--budget", "8", "--popsize", "4", "--prompt-length", "4", "--intrinsic-dim", "6",
            "--k-shot", "2", "--eval-every", "4", "--seed", "3", "--prompt-init", TEXT, "-o", str(run_dir), "--quiet"]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "config.json").read_text())["tune"]["prompt_init"] == TEXT
    assert (run_dir / "initial_prompt.npy").is_file()
    saved = SavedRun.load(run_dir)
    np.testing.assert_allclose(saved.prompt(), np.load(run_dir / "best_prompt.npy"), rtol=1e-6)
    assert saved.initial_prompt is not None and not np.array_equal(
        saved.prompt(), Projection(saved.projection)(saved.z)[0])  # p0 is part of the rebuilt prompt
    res = runner.invoke(app, ["evaluate", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["value"] == json.loads((run_dir / "result.json").read_text())["test"]["value"]
    res = runner.invoke(app, ["fit", "--resume", str(run_dir), "--prompt-init", "something else"])
    assert res.exit_code == 2 and "prompt" in res.output


async def test_the_service_refuses_an_empty_text(llama_backend: LocalBackend) -> None:
    import aiohttp

    async with served(llama_backend) as server, aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/v1/embed-text", json={"protocol": 1, "text": "  "}) as resp:
            body = await resp.json()
        assert resp.status == 422 and body["error"]["field"] == "text"
        async with http.post(f"{server.url}/v1/embed-text", json={"protocol": 1, "text": TEXT}) as resp:
            body = await resp.json()
        assert resp.status == 200 and body["embeddings"]["shape"] == list(_rows(llama_backend, TEXT).shape)
