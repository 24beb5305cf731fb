"""The scoring workloads the throughput benchmarks time, built without any download.

* ``embedded``: the embedded model on the SST-2 few-shot train set (16 per class, seed 42) with
  the task's registered template, the batch every BBT call scores in ``lmaas-tune fit --task sst2``.
* ``roberta-large-shaped``: a randomly initialised masked LM with RoBERTa-large's sizes (24 layers,
  hidden 1024, 16 heads, FFN 4096, vocabulary 50265), and 32 synthetic inputs whose token lengths
  run evenly from 35 to 59 (mean 47, the paper's SST-2 setting). Its tokenizer is word-level, so a
  text of n words is n tokens plus the template's.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmaas_tune.backends.base import ModelKind, Query, ScoringBatch
from lmaas_tune.backends.local.backend import LocalBackend, pick_device, pick_dtype
from lmaas_tune.tuning.evaluation import prepare
from lmaas_tune.tuning.fewshot import FewShotSplit
from lmaas_tune.tasks import get_task

WORKLOADS = ("embedded", "roberta-large-shaped")


@dataclass
class Workload:
    name: str
    model: Any
    tokenizer: Any
    kind: ModelKind
    batch: ScoringBatch

    def backend(self, **kwargs: Any) -> LocalBackend:
        """A backend on this model; with ``compile=True`` on a copy of it, since compiling is in place
        and the other backends keep running the eager model."""
        model = copy.deepcopy(self.model) if kwargs.get("compile") else self.model
        return LocalBackend(model, self.tokenizer, self.kind, model_id=self.name, **kwargs)


def embedded(dtype: str, device: str = "cpu") -> Workload:
    backend = LocalBackend.load(dtype=dtype, device=device)
    task = get_task("sst2")
    split = FewShotSplit.draw(task.load("train"), 16, 42, task.num_labels)
    train = asyncio.run(prepare(backend, task, split.train, 50))
    asyncio.run(backend.aclose())
    return Workload("embedded", backend.model, backend.tokenizer, backend.info.kind, train.batch)


def _word_tokenizer(words: list[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def roberta_large_shaped(dtype: str, device: str = "cpu", *, layers: int = 24, examples: int = 32) -> Workload:
    """Random weights, real shapes. ``layers`` below 24 gives a shallower model for quick CPU runs."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    words = [f"w{i}" for i in range(2000)] + ["bad", "great", "It", "was", "."]
    tok = _word_tokenizer(words)
    config = RobertaConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
                           intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    dev = pick_device(device)
    model = RobertaForMaskedLM(config).to(dev, pick_dtype(dtype, dev)).eval()
    rng = np.random.default_rng(0)
    # "<s> text . It was <mask> . </s>": 6 tokens around the text
    lengths = np.linspace(35, 59, examples).round().astype(int) - 6
    queries = tuple(Query(" ".join(rng.choice(words[:2000], n)) + " . It was", " .") for n in lengths)
    return Workload("roberta-large-shaped", model, tok, ModelKind.MASKED, ScoringBatch(queries, ("bad", "great")))


def build(name: str, dtype: str, device: str = "cpu", **kwargs: Any) -> Workload:
    return {"embedded": embedded, "roberta-large-shaped": roberta_large_shaped}[name](dtype, device, **kwargs)
