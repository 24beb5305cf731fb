"""LocalBackend against the Backend contract (lmaas_tune/backends/base.py), on tiny random models.

References are computed independently of the backend's encoding: text goes through the tokenizer
with its own special tokens, and the full model (full-vocabulary LM head) is run with ``input_ids``
or a hand-built ``inputs_embeds``, then the label-word columns are picked out.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading

import numpy as np
import pytest
import torch

from lmaas_tune.backends.base import ModelKind, Query, ScoringBatch
from lmaas_tune.backends.local.encoding import label_token_ids
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.errors import ConfigError, InputTooLongError, VerbalizerError

WORDS = ("bad", "great")
TEXTS = (
    "it was a great movie",
    "a terrible movie , it was bad",
    "the news was good news , yes . the plot was terrible and the ending was bad",
    "it",
)


def _query(backend: LocalBackend, text: str) -> Query:
    if backend.info.kind is ModelKind.MASKED:
        return Query(f"{text} . It was", " .")
    return Query(f"{text} . It was")


def _batch(backend: LocalBackend, texts: tuple[str, ...] = TEXTS, words: tuple[str, ...] = WORDS) -> ScoringBatch:
    return ScoringBatch(tuple(_query(backend, t) for t in texts), words)


def _label_ids(backend: LocalBackend, words: tuple[str, ...] = WORDS) -> list[int]:
    ids = backend.tokenizer.convert_tokens_to_ids(["Ġ" + w for w in words])
    assert backend.tokenizer.unk_token_id not in ids
    return ids


def _reference_ids(backend: LocalBackend, q: Query) -> tuple[list[int], int]:
    """Token ids of the whole templated input (tokenizer's own special tokens) and the readout index."""
    tok = backend.tokenizer
    if backend.info.kind is ModelKind.MASKED:
        # "<mask>" has lstrip=True (as in RoBERTa): it swallows the space before it.
        ids = tok(q.prefix + " <mask>" + q.suffix)["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert ids.count(tok.mask_token_id) == 1
        return ids, ids.index(tok.mask_token_id)
    ids = tok(q.prefix)["input_ids"]
    return ids, len(ids) - 1


def _leading_specials(backend: LocalBackend) -> int:
    """How many special tokens the tokenizer puts before the text (where the prompt goes)."""
    tok = backend.tokenizer
    first = tok("it")["input_ids"][0]
    return 1 if first in (tok.bos_token_id, tok.cls_token_id) and first is not None else 0


def _reference_logits(backend: LocalBackend, prompt: np.ndarray | None, q: Query) -> np.ndarray:
    """Full-vocabulary forward of one unpadded input; label-word logits at the readout position."""
    model = backend.model
    ids, pos = _reference_ids(backend, q)
    with torch.no_grad():
        if prompt is None:
            logits = model(input_ids=torch.tensor([ids])).logits[0, pos]
        else:
            emb = model.get_input_embeddings()(torch.tensor([ids]))[0]
            s = _leading_specials(backend)
            p = torch.from_numpy(np.asarray(prompt, dtype=np.float32))
            full = torch.cat([emb[:s], p, emb[s:]], dim=0)[None]
            logits = model(inputs_embeds=full).logits[0, pos + len(p)]
    return logits[_label_ids(backend)].numpy()


def _prompts(backend: LocalBackend, n: int, length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = backend.info.hidden_size
    return (rng.standard_normal((n, length, d)) * backend.info.embedding_std).astype(np.float32)


# -- (a) no prompt, zero prompt, any prompt -------------------------------------------------------


async def test_score_is_a_coroutine(any_backend: LocalBackend) -> None:
    assert inspect.iscoroutinefunction(any_backend.score)
    assert inspect.iscoroutinefunction(any_backend.token_lengths)


async def test_no_prompt_scores_the_manual_template(any_backend: LocalBackend) -> None:
    batch = _batch(any_backend)
    out = await any_backend.score(None, batch)
    assert out.shape == (1, len(TEXTS), 2) and out.dtype == np.float32
    for n, q in enumerate(batch.queries):
        np.testing.assert_allclose(out[0, n], _reference_logits(any_backend, None, q), atol=1e-5, rtol=1e-5)


async def test_empty_prompt_is_no_prompt(any_backend: LocalBackend) -> None:
    batch = _batch(any_backend)
    none = await any_backend.score(None, batch)
    empty = await any_backend.score(np.zeros((1, 0, any_backend.info.hidden_size), np.float32), batch)
    np.testing.assert_allclose(empty, none, atol=1e-6)


@pytest.mark.parametrize("length", [1, 4])
async def test_zero_prompt_is_zero_vectors_after_the_leading_special_token(any_backend: LocalBackend, length: int) -> None:
    batch = _batch(any_backend)
    zeros = np.zeros((1, length, any_backend.info.hidden_size), np.float32)
    out = await any_backend.score(zeros, batch)
    assert out.shape == (1, len(TEXTS), 2)
    for n, q in enumerate(batch.queries):
        np.testing.assert_allclose(out[0, n], _reference_logits(any_backend, zeros[0], q), atol=1e-5, rtol=1e-5)
    # a zero prompt is L extra positions, not the absence of a prompt
    none = await any_backend.score(None, batch)
    assert not np.allclose(out, none, atol=1e-3)


async def test_random_prompt_matches_hand_built_inputs_embeds(any_backend: LocalBackend) -> None:
    batch = _batch(any_backend)
    prompts = _prompts(any_backend, 3, 5, seed=7)
    out = await any_backend.score(prompts, batch)
    assert out.shape == (3, len(TEXTS), 2)
    for p in range(3):
        for n, q in enumerate(batch.queries):
            np.testing.assert_allclose(out[p, n], _reference_logits(any_backend, prompts[p], q), atol=1e-5, rtol=1e-5)


def test_prompt_goes_after_the_leading_special_token(masked_backend, llama_backend, gpt2_backend) -> None:
    # RoBERTa: <s> first; Llama tokenizer prepends BOS; GPT-2 tokenizer adds nothing.
    for backend, expected in ((masked_backend, 1), (llama_backend, 1), (gpt2_backend, 0)):
        enc = backend.encode(_batch(backend))
        assert enc.insert_at == expected == _leading_specials(backend)


# -- (b) causal readout: the last real token, whatever the padding ------------------------------


async def test_causal_readout_ignores_padding_and_batch_mates(causal_backend: LocalBackend) -> None:
    backend = causal_backend
    short = _query(backend, "it")
    long_text = " ".join(["the plot was terrible and the ending was bad , but the news was good"] * 4)
    longs = [_query(backend, long_text), _query(backend, long_text + " yes")]
    alone = ScoringBatch((short,), WORDS)
    mixed = ScoringBatch((longs[0], short, longs[1]), WORDS)
    lengths = await backend.token_lengths(mixed)
    assert lengths[0] > 5 * lengths[1]  # much longer: the short row is mostly padding

    for prompts in (None, _prompts(backend, 2, 3, seed=3)):
        a = await backend.score(prompts, alone)
        m = await backend.score(prompts, mixed)
        np.testing.assert_allclose(m[:, 1], a[:, 0], atol=1e-5, rtol=1e-5)
        for p in range(a.shape[0]):
            ref = _reference_logits(backend, None if prompts is None else prompts[p], short)
            np.testing.assert_allclose(a[p, 0], ref, atol=1e-5, rtol=1e-5)

    # Negative control: reading the last column of a right-padded batch (the reference
    # implementation's bug) gives something else, so the checks above can tell them apart.
    tok = backend.tokenizer
    ids = [tok(q.prefix)["input_ids"] for q in mixed.queries]
    width = max(map(len, ids))
    padded = torch.full((3, width), backend.tokenizer.pad_token_id)
    mask = torch.zeros((3, width), dtype=torch.long)
    for r, row in enumerate(ids):
        padded[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    with torch.no_grad():
        last_col = backend.model(input_ids=padded, attention_mask=mask).logits[1, -1, _label_ids(backend)].numpy()
    assert not np.allclose(last_col, a[0, 0], atol=1e-3)


async def test_masked_readout_ignores_batch_mates(masked_backend: LocalBackend) -> None:
    batch = _batch(masked_backend)
    prompts = _prompts(masked_backend, 2, 3, seed=4)
    together = await masked_backend.score(prompts, batch)
    for n in range(len(batch)):
        alone = await masked_backend.score(prompts, batch.subset([n]))
        np.testing.assert_allclose(together[:, n], alone[:, 0], atol=1e-5, rtol=1e-5)


# -- (c) a population at once == one candidate at a time, whatever the token budget --------------


class _PassCounter:
    """Forward passes through a model: the sequence length (``inputs_embeds``' second axis) of each."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.lengths: list[int] = []
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    @property
    def passes(self) -> int:
        return len(self.lengths)

    def _hook(self, _module: object, _args: object, kwargs: dict) -> None:
        self.lengths.append(int(kwargs["inputs_embeds"].shape[1]))

    def close(self) -> None:
        self._handle.remove()


@pytest.mark.parametrize("token_budget", [None, 1, 40])
async def test_population_equals_one_by_one(any_backend: LocalBackend, token_budget: int | None) -> None:
    # the transformers layers throughout, so that every pass is a call of the model (the fused
    # Llama path runs its text rows outside it: test_fused_llama_equals_the_transformers_layers)
    backend = LocalBackend(any_backend.model, any_backend.tokenizer, any_backend.info.kind, model_id="budgeted",
                           token_budget=token_budget or 2048, fused=False)
    batch = _batch(any_backend)
    prompts = _prompts(any_backend, 5, 3, seed=11)
    counter = _PassCounter(any_backend.model)
    try:
        together = await backend.score(prompts, batch)
        passes = counter.passes
    finally:
        counter.close()
        await backend.aclose()
    singles = np.concatenate([await any_backend.score(prompts[p:p + 1], batch) for p in range(5)], axis=0)
    assert together.shape == singles.shape == (5, len(TEXTS), 2)
    np.testing.assert_allclose(together, singles, atol=1e-5, rtol=1e-5)
    passes -= int(backend.shares_prefix)  # causal LMs: one pass runs the prompts of the whole population
    if token_budget is None:
        assert passes == 1  # the whole population in one batched pass
    elif token_budget == 1:
        assert passes == 5 * len(TEXTS)  # one row per pass
    else:
        assert 1 < passes < 5 * len(TEXTS)
    # rows are not all the same (the comparison above is not vacuous)
    assert not np.allclose(together[0], together[1], atol=1e-3)


@pytest.mark.parametrize("token_budget", [8192, 40])
@pytest.mark.parametrize("head", ["", "Review: the film"])
async def test_shared_prefix_equals_whole_sequences(causal_backend: LocalBackend, token_budget: int, head: str) -> None:
    """Running each candidate's prompt once, with the template text every query starts with, and
    the rest of the texts on its keys/values gives what running every (example, candidate) row whole
    gives."""
    assert causal_backend.shares_prefix
    whole = LocalBackend(causal_backend.model, causal_backend.tokenizer, causal_backend.info.kind,
                         model_id="whole", token_budget=token_budget, share_prefix=False)
    shared = LocalBackend(causal_backend.model, causal_backend.tokenizer, causal_backend.info.kind,
                          model_id="shared", token_budget=token_budget, fused=False)
    batch = _batch(causal_backend, tuple(f"{head} {t}".strip() for t in TEXTS))
    enc = shared.encode(batch)
    common = enc.shared_after_prompt
    if head:  # the head's words, and no further: the texts differ right after it
        assert common == len(causal_backend.tokenizer(head, add_special_tokens=False)["input_ids"]) >= 3
    else:
        assert common == 0
    prompts = _prompts(causal_backend, 4, 6, seed=21)
    counter = _PassCounter(causal_backend.model)
    try:
        a = await whole.score(prompts, batch)
        whole_lengths, counter.lengths = counter.lengths, []
        b = await shared.score(prompts, batch)
        shared_lengths = counter.lengths
    finally:
        counter.close()
        await whole.aclose()
        await shared.aclose()
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
    # the one prefix pass (leading special token, prompt, shared head); the same text passes, each
    # shorter by the prompt and the head
    assert shared_lengths[0] == enc.insert_at + 6 + common
    assert [n - 6 - enc.insert_at - common for n in whole_lengths] == shared_lengths[1:]
    assert not np.allclose(b[0], b[1], atol=1e-3)


@pytest.mark.parametrize(("token_budget", "head"), [(8192, ""), (1, ""), (40, ""), (40, "Review: the film")])
async def test_fused_llama_equals_the_transformers_layers(llama_backend: LocalBackend, token_budget: int,
                                                          head: str) -> None:
    """The fused path (lmaas_tune/backends/fused_llama.py) scores what the model's own layers score,
    calling the model only for the prefix pass; the tiny Llama has grouped key/value heads."""
    model, tok = llama_backend.model, llama_backend.tokenizer
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    fused = LocalBackend(model, tok, ModelKind.CAUSAL, model_id="fused", token_budget=token_budget, fused=True)
    layers = LocalBackend(model, tok, ModelKind.CAUSAL, model_id="layers", token_budget=token_budget)
    assert fused.fused and not layers.fused  # opt-in
    batch = _batch(llama_backend, tuple(f"{head} {t}".strip() for t in TEXTS))
    assert (fused.encode(batch).shared_after_prompt > 0) == bool(head)
    prompts = _prompts(llama_backend, 4, 6, seed=5)
    counter = _PassCounter(model)
    try:
        got = await fused.score(prompts, batch)
        assert counter.passes == 1  # the prefix pass; every text row ran in the fused path
        want = await layers.score(prompts, batch)
    finally:
        counter.close()
        await fused.aclose()
        await layers.aclose()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    for p in (0, 3):
        for n, q in enumerate(batch.queries):
            np.testing.assert_allclose(got[p, n], _reference_logits(llama_backend, prompts[p], q), atol=1e-4, rtol=1e-4)
    assert not np.allclose(got[0], got[1], atol=1e-3)


async def test_fused_llama_in_bfloat16_tracks_float32(llama_dir) -> None:
    """In bfloat16 the fused path rounds at other points than the model's layers do; its logits
    stay as close to the float32 ones as the layers' own bfloat16 logits are."""
    exact = LocalBackend.load(str(llama_dir), device="cpu", dtype="float32", fused=False)
    fused = LocalBackend.load(str(llama_dir), device="cpu", dtype="bfloat16", fused=True)
    layers = LocalBackend.load(str(llama_dir), device="cpu", dtype="bfloat16", fused=False)
    batch = _batch(exact)
    prompts = _prompts(exact, 6, 6, seed=8)
    try:
        want = await exact.score(prompts, batch)
        err_fused = np.abs(await fused.score(prompts, batch) - want).max()
        err_layers = np.abs(await layers.score(prompts, batch) - want).max()
    finally:
        for b in (exact, fused, layers):
            await b.aclose()
    scale = np.abs(want).max()
    assert 0 < err_fused < 0.05 * scale and err_fused < 1.5 * err_layers  # 0.059 against 0.076 here


def test_fused_llama_only_where_it_computes_the_same(llama_backend, gpt2_backend, masked_backend, caplog) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmaas_tune.backends.local.fused_llama import fused_llama_supported

    assert fused_llama_supported(llama_backend.model)
    assert not fused_llama_supported(gpt2_backend.model) and not fused_llama_supported(masked_backend.model)
    small = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2}
    assert fused_llama_supported(LlamaForCausalLM(LlamaConfig(**small)))
    for change in ({"attention_bias": True}, {"mlp_bias": True}, {"hidden_act": "gelu"}):
        assert not fused_llama_supported(LlamaForCausalLM(LlamaConfig(**small, **change))), change
    assert not fused_llama_supported(LlamaForCausalLM(LlamaConfig(**small)).half())
    unshared = LocalBackend(llama_backend.model, llama_backend.tokenizer, ModelKind.CAUSAL, model_id="u",
                            share_prefix=False, fused=True)
    assert not unshared.fused  # whole rows keep the transformers path
    with caplog.at_level(logging.WARNING, logger="lmaas_tune"):
        gpt2 = LocalBackend(gpt2_backend.model, gpt2_backend.tokenizer, ModelKind.CAUSAL, model_id="tiny-gpt2", fused=True)
    assert not gpt2.fused and "tiny-gpt2 runs on its own layers" in caplog.text


# -- (d) label-word ids --------------------------------------------------------------------------


def test_label_ids_byte_level(bytelevel_tokenizer) -> None:
    tok = bytelevel_tokenizer
    ids = label_token_ids(tok, ("great", "bad", "It"))
    assert ids == tuple(tok.convert_tokens_to_ids(["Ġgreat", "Ġbad", "ĠIt"]))


def test_label_ids_sentencepiece(sp_tokenizer) -> None:
    tok = sp_tokenizer
    ids = label_token_ids(tok, ("great", "bad", "Maybe"))
    assert ids == tuple(tok.convert_tokens_to_ids(["▁great", "▁bad", "▁Maybe"]))
    assert tok.unk_token_id not in ids


def test_backend_reads_label_ids_of_the_leading_space_form(any_backend: LocalBackend) -> None:
    enc = any_backend.encode(_batch(any_backend, words=("terrible", "good", "great")))
    assert list(enc.label_ids) == _label_ids(any_backend, ("terrible", "good", "great"))


@pytest.mark.parametrize("style", ["byte_level", "sentencepiece"])
def test_label_word_collision_is_an_error(style: str, bytelevel_tokenizer, sp_tokenizer) -> None:
    tok = bytelevel_tokenizer if style == "byte_level" else sp_tokenizer
    with pytest.raises(VerbalizerError, match="same token"):
        label_token_ids(tok, ("bad", "great", "great!"))


@pytest.mark.parametrize(
    ("style", "word", "first"),
    [("byte_level", "great-movie", "Ġgreat"), ("sentencepiece", "great-movie", "▁great"),
     ("byte_level", "newsworthy", "Ġnews"), ("sentencepiece", "newsworthy", "▁news")],
)
def test_multi_token_word_reads_first_piece(style, word, first, bytelevel_tokenizer, sp_tokenizer, caplog) -> None:
    tok = bytelevel_tokenizer if style == "byte_level" else sp_tokenizer
    assert len(tok.tokenize(" " + word if style == "byte_level" else word)) > 1
    with caplog.at_level(logging.WARNING, logger="lmaas_tune"):
        ids = label_token_ids(tok, (word, "bad"))
    assert ids[0] == tok.convert_tokens_to_ids(first)
    assert any("splits into" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("style", ["byte_level", "sentencepiece"])
def test_a_bare_space_piece_is_not_read_as_the_label(style: str, bytelevel_tokenizer, sp_tokenizer) -> None:
    tok = bytelevel_tokenizer if style == "byte_level" else sp_tokenizer
    words = ("qzq", "xjx")  # not in the fixture vocabularies: the space may come out as its own piece
    ids = label_token_ids(tok, words)
    for tid in ids:
        assert tok.decode([tid]).strip(), f"read a bare space piece {tok.convert_ids_to_tokens(tid)!r}"
    assert ids[0] != ids[1]


def test_masked_encoding_without_mask_token_is_an_error(llama_backend: LocalBackend) -> None:
    from lmaas_tune.backends.local.encoding import encode_batch

    with pytest.raises(VerbalizerError, match="mask"):
        encode_batch(llama_backend.tokenizer, ModelKind.MASKED, ScoringBatch((Query("it was"),), WORDS))


# -- (e) length limits ---------------------------------------------------------------------------


def _text_of_length(backend: LocalBackend, target: int) -> Query:
    """A query that encodes to exactly ``target`` tokens (special tokens included)."""
    words = ["movie"] * target
    while True:
        q = _query(backend, "it was " + " ".join(words))
        n = int(backend.encode(ScoringBatch((q,), WORDS)).lengths[0])
        if n == target:
            return q
        assert n > target
        words.pop()


async def test_input_too_long(any_backend: LocalBackend) -> None:
    limit = any_backend.info.max_length
    assert limit == 128  # RoBERTa: 130 positions minus its offset of 2; the others: 128
    exact = ScoringBatch((_query(any_backend, "it was"), _text_of_length(any_backend, limit - 2)), WORDS)
    assert (await any_backend.token_lengths(exact))[1] == limit - 2
    # exactly at the limit with a 2-token prompt: scored, finite
    out = await any_backend.score(_prompts(any_backend, 1, 2), exact)
    assert np.isfinite(out).all()
    # one token over
    with pytest.raises(InputTooLongError, match=f"limit of {limit}"):
        await any_backend.score(_prompts(any_backend, 1, 3), exact)
    with pytest.raises(InputTooLongError):
        await any_backend.score(None, ScoringBatch((_query(any_backend, "movie " * 300),), WORDS))
    # the backend still works afterwards
    assert np.isfinite(await any_backend.score(None, exact.subset([0]))).all()


def test_tokenizer_limit_is_honoured(masked_backend: LocalBackend) -> None:
    import copy

    tok = copy.deepcopy(masked_backend.tokenizer)
    tok.model_max_length = 64
    other = LocalBackend(masked_backend.model, tok, ModelKind.MASKED, model_id="short")
    assert other.info.max_length == 64
    asyncio.run(other.aclose())


async def test_prepare_drops_inputs_that_cannot_fit(any_backend: LocalBackend, tmp_path) -> None:
    from lmaas_tune.tuning.evaluation import prepare
    from lmaas_tune.tasks import Example, custom_task

    task = custom_task(template="{sentence} . It was {mask}", label_words=WORDS, train="x.tsv", test="x.tsv")
    examples = [Example({"sentence": "a great movie"}, 1), Example({"sentence": "movie " * 200}, 0),
                Example({"sentence": "a bad movie"}, 0)]
    data = await prepare(any_backend, task, examples, prompt_length=5)
    assert data.dropped == 1 and len(data) == 2
    assert data.labels.tolist() == [1, 0]
    assert [q.prefix for q in data.batch.queries] == ["a great movie . It was", "a bad movie . It was"]


async def test_empty_prefix_masked_template(masked_backend: LocalBackend) -> None:
    # AG News style: "{mask} News: {sentence}" puts the mask right after <s>
    batch = ScoringBatch((Query("", " News: the team won the game"),), ("Sports", "Business"))
    enc = masked_backend.encode(batch)
    assert enc.readout.tolist() == [1] and enc.ids[0][1] == masked_backend.tokenizer.mask_token_id
    prompt = _prompts(masked_backend, 1, 2, seed=5)
    out = await masked_backend.score(prompt, batch)
    ids, pos = _reference_ids(masked_backend, batch.queries[0])
    assert pos == 1
    model = masked_backend.model
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.tensor([ids]))[0]
        full = torch.cat([emb[:1], torch.from_numpy(prompt[0]), emb[1:]])[None]
        ref = model(inputs_embeds=full).logits[0, pos + 2, _label_ids(masked_backend, ("Sports", "Business"))]
    np.testing.assert_allclose(out[0, 0], ref.numpy(), atol=1e-5, rtol=1e-5)


async def test_bad_prompt_shapes(masked_backend: LocalBackend) -> None:
    batch = _batch(masked_backend)
    d = masked_backend.info.hidden_size
    with pytest.raises(ConfigError, match="hidden size"):
        await masked_backend.score(np.zeros((1, 2, d + 1), np.float32), batch)
    with pytest.raises(ConfigError, match="shape"):
        await masked_backend.score(np.zeros((2, d), np.float32), batch)


async def test_token_lengths_count_special_tokens(any_backend: LocalBackend) -> None:
    batch = _batch(any_backend)
    lengths = await any_backend.token_lengths(batch)
    assert lengths == tuple(len(_reference_ids(any_backend, q)[0]) for q in batch.queries)


async def test_closed_backend_refuses_work(masked_backend: LocalBackend) -> None:
    other = LocalBackend(masked_backend.model, masked_backend.tokenizer, ModelKind.MASKED, model_id="x")
    async with other:
        assert (await other.score(None, _batch(masked_backend))).shape == (1, len(TEXTS), 2)
    await other.aclose()  # idempotent
    with pytest.raises(ConfigError, match="closed"):
        await other.score(None, _batch(masked_backend))


# -- (f) score does not block the event loop -----------------------------------------------------


async def test_score_does_not_block_the_event_loop(llama_backend: LocalBackend) -> None:
    """The forward pass parks until the event loop, in another coroutine, lets it go.

    If ``score`` ran the model on the loop's thread, the loop could never run the releasing
    coroutine: the hook would time out and ``released`` would stay False.
    """
    entered, release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def hook(*_: object) -> None:
        seen["thread"] = threading.get_ident()
        entered.set()
        seen["released"] = release.wait(timeout=20)

    handle = llama_backend.model.get_input_embeddings().register_forward_hook(hook)
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while not entered.is_set():
            await asyncio.sleep(0.001)
        for _ in range(5):  # the loop makes progress while the forward pass is in flight
            ticks += 1
            await asyncio.sleep(0)
        release.set()

    try:
        scoring = asyncio.ensure_future(llama_backend.score(None, _batch(llama_backend)))
        await asyncio.wait_for(asyncio.gather(scoring, other_work()), timeout=60)
    finally:
        handle.remove()
        release.set()
    assert seen["released"] is True
    assert ticks == 5
    assert seen["thread"] != threading.get_ident()
    assert scoring.result().shape == (1, len(TEXTS), 2)


def test_auto_precision_follows_the_hardware() -> None:
    from lmaas_tune.backends.local.backend import cpu_has_native_bf16, pick_dtype

    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert pick_dtype("fp32", cpu) == torch.float32 and pick_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        pick_dtype("int3", cpu)
