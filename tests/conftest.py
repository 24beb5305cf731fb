"""Shared fixtures: tiny random transformers with tokenizers trained here (nothing from the hub).

Every model is built from a config with a fixed torch seed, saved with its tokenizer to a temporary
directory and loaded back through ``LocalBackend.load(<dir>)``, so the loading path runs too.
"""

from __future__ import annotations

import asyncio
import os
import string
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from lmaas_tune.backends.base import ModelKind
from lmaas_tune.backends.local.backend import LocalBackend

#: words the tests rely on being single tokens in their leading-space form
WORDS = ("great", "bad", "good", "terrible", "movie", "it", "was", "news", "yes", "no", "Yes", "No", "Maybe")

CORPUS = [
    "it was a great movie .",
    "it was a bad movie .",
    "a good movie , it was good .",
    "a terrible movie . It was terrible .",
    "the news was good news , yes .",
    "the news was bad news , no .",
    "so Yes ? No ? Maybe ? yes , no , maybe",
    "It was great . It was bad . It was good .",
    "this film is great fun and the acting is good",
    "the plot was terrible and the ending was bad",
    "World Sports Business Tech news about the world",
    "a great , great , great movie ! what a movie",
    "sports news : the team won the game",
    "business news : the market fell",
] * 10

SPECIAL = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, as in RoBERTa
HIDDEN = 32
MAX_POSITIONS = 128


def _byte_level_tokenizer(*, roberta: bool, bos: bool) -> Tokenizer:
    """A byte-level BPE (``Ġword``) trained on :data:`CORPUS`."""
    specials = [AddedToken(t, special=True) for t in SPECIAL[:4]]
    specials.append(AddedToken("<mask>", special=True, lstrip=True))  # like RoBERTa's
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, min_frequency=1, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if roberta:
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    elif bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    for w in WORDS:  # guard the fixture itself: the tests assume these are whole tokens
        assert tok.token_to_id("Ġ" + w) is not None, w
    return tok


def _wrap(tok: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    # no model_max_length: the model's position table alone sets the limit (as for roberta-base)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def roberta_tokenizer() -> PreTrainedTokenizerFast:
    return _wrap(
        _byte_level_tokenizer(roberta=True, bos=False),
        bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
    )


def causal_tokenizer(*, bos: bool) -> PreTrainedTokenizerFast:
    fast = _wrap(
        _byte_level_tokenizer(roberta=False, bos=bos),
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
    )
    return fast


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE: Metaspace pre-tokenizer, words as ``▁word``, BOS prepended."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=600, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation + "▁"),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    for w in WORDS:
        assert tok.token_to_id("▁" + w) is not None, w
    return _wrap(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")


def _save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, path: Path) -> Path:
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import RobertaConfig, RobertaForMaskedLM

    tok = roberta_tokenizer()
    cfg = RobertaConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=MAX_POSITIONS + 2, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, initializer_range=0.3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = RobertaForMaskedLM(cfg).float().eval()
    with torch.no_grad():  # the LM head's bias starts at zero; make it count in the readout
        model.lm_head.bias.normal_(0.0, 1.0)
    return _save(model, tok, tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-style causal LM whose tokenizer prepends BOS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = causal_tokenizer(bos=True)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=MAX_POSITIONS,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, initializer_range=0.3,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).float().eval()
    return _save(model, tok, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-style causal LM whose tokenizer adds no special tokens (no leading BOS)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = causal_tokenizer(bos=False)
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=HIDDEN, n_layer=2, n_head=2, n_inner=64, n_positions=MAX_POSITIONS,
        bos_token_id=0, eos_token_id=2, pad_token_id=1, initializer_range=0.3,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    torch.manual_seed(2)
    model = GPT2LMHeadModel(cfg).float().eval()
    return _save(model, tok, tmp_path_factory.mktemp("tiny-gpt2"))


def _load(path: Path, request: pytest.FixtureRequest, **kwargs: object) -> LocalBackend:
    backend = LocalBackend.load(str(path), device="cpu", dtype="float32", **kwargs)  # type: ignore[arg-type]
    request.addfinalizer(lambda: asyncio.run(backend.aclose()))
    return backend


@pytest.fixture(scope="session")
def masked_backend(roberta_dir: Path, request: pytest.FixtureRequest) -> LocalBackend:
    backend = _load(roberta_dir, request)
    assert backend.info.kind is ModelKind.MASKED
    return backend


@pytest.fixture(scope="session")
def llama_backend(llama_dir: Path, request: pytest.FixtureRequest) -> LocalBackend:
    backend = _load(llama_dir, request)
    assert backend.info.kind is ModelKind.CAUSAL
    return backend


@pytest.fixture(scope="session")
def gpt2_backend(gpt2_dir: Path, request: pytest.FixtureRequest) -> LocalBackend:
    backend = _load(gpt2_dir, request)
    assert backend.info.kind is ModelKind.CAUSAL
    return backend


@pytest.fixture(params=["llama", "gpt2"])
def causal_backend(request: pytest.FixtureRequest) -> LocalBackend:
    """Each causal model in turn: with a leading BOS (Llama) and without one (GPT-2)."""
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture(params=["masked", "llama", "gpt2"])
def any_backend(request: pytest.FixtureRequest) -> LocalBackend:
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture(scope="session")
def sp_tokenizer() -> PreTrainedTokenizerFast:
    return sentencepiece_tokenizer()


@pytest.fixture(scope="session")
def bytelevel_tokenizer() -> PreTrainedTokenizerFast:
    return roberta_tokenizer()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the vLLM servers the collected tests use now, in the background (see vllm_support)."""
    import vllm_support

    wanted = set().union(*(getattr(item, "fixturenames", ()) for item in session.items))
    for name in vllm_support.SERVERS:
        if name in wanted:
            vllm_support.prestart(name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if "vllm_support" in sys.modules:
        sys.modules["vllm_support"].stop_started()


@pytest.fixture(scope="session")
def vllm_url() -> str:
    """A real vLLM server (scripts/vllm_server.sh): prompt embeddings on, API key ``vllm_support.KEY``."""
    import vllm_support

    return vllm_support.server("vllm_url")


@pytest.fixture(scope="session")
def vllm_plain_url() -> str:
    """A real vLLM server started *without* --enable-prompt-embeds (no API key), which the vLLM backend must refuse."""
    import vllm_support

    return vllm_support.server("vllm_plain_url")


@pytest.fixture(scope="session")
def embedded_local() -> LocalBackend:
    """The embedded model in this process, in float32: the reference the vLLM server is compared with."""
    return LocalBackend.load("smollm2-135m", device="cpu", dtype="float32")
