"""Tokenising templated queries and label words for a local model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from lmaas_tune.errors import VerbalizerError
from lmaas_tune.backends.base import ModelKind, ScoringBatch

log = logging.getLogger("lmaas_tune")


@dataclass(frozen=True)
class EncodedBatch:
    """Token ids of each query, where to read it, and where the soft prompt goes."""

    ids: tuple[tuple[int, ...], ...]
    readout: np.ndarray  # [N] index into ids of the position whose output is read
    insert_at: int  # soft prompt goes before ids[insert_at]
    label_ids: tuple[int, ...]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], dtype=np.int64)

    @cached_property
    def shared_after_prompt(self) -> int:
        """How many tokens right after the prompt slot every query starts with (a template's
        leading text, such as ``Review:``), leaving each query at least its last token of its own."""
        tails = [row[self.insert_at:] for row in self.ids]
        limit = min((len(t) for t in tails), default=0) - 1
        n = 0
        while n < limit and all(t[n] == tails[0][n] for t in tails):
            n += 1
        return n


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer starts every sequence with a BOS token."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def label_token_ids(tokenizer: Any, words: tuple[str, ...]) -> tuple[int, ...]:
    """First sub-token of each label word in its mid-sentence (leading space) form.

    Found as the tokens that ``"x <word>"`` adds to ``"x"``, which works for byte-level BPE (``Ġword``)
    and SentencePiece (``▁word``) alike. A leading bare-space piece is skipped. Words that split are
    read by their first piece (logged);
    words whose first pieces collide are an error.
    """
    base = _plain_ids(tokenizer, "x")
    out: list[int] = []
    for word in words:
        full = _plain_ids(tokenizer, "x " + word)
        pieces = full[len(base):] if full[: len(base)] == base else _plain_ids(tokenizer, " " + word)
        while len(pieces) > 1 and not tokenizer.decode(pieces[:1]).strip():
            pieces = pieces[1:]  # a bare space piece ("Ġ", "▁") says nothing about the word
        if not pieces:
            raise VerbalizerError(f"label word {word!r} produced no tokens")
        if len(pieces) > 1:
            log.warning(
                "label word %r splits into %d tokens %s; reading its first token %r",
                word, len(pieces), tokenizer.convert_ids_to_tokens(pieces), tokenizer.convert_ids_to_tokens(pieces[0]),
            )
        out.append(pieces[0])
    seen: dict[int, str] = {}
    for word, tid in zip(words, out):
        if tid in seen:
            raise VerbalizerError(
                f"label words {seen[tid]!r} and {word!r} start with the same token "
                f"{tokenizer.convert_ids_to_tokens(tid)!r}; choose words that differ in their first token"
            )
        seen[tid] = word
    return tuple(out)


def encode_batch(
    tokenizer: Any, kind: ModelKind, batch: ScoringBatch, label_ids: tuple[int, ...] | None = None
) -> EncodedBatch:
    """Masked: ``[CLS] prefix [MASK] suffix [SEP]``; causal: ``[BOS]? prefix``, read at the end."""
    ids: list[tuple[int, ...]] = []
    readout: list[int] = []
    if kind is ModelKind.MASKED:
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if tokenizer.mask_token_id is None:
            raise VerbalizerError("this tokenizer has no mask token; load the model as a causal LM")
        head = [cls_id] if cls_id is not None else []
        tail = [sep_id] if sep_id is not None else []
        for q in batch.queries:
            pre = head + _plain_ids(tokenizer, q.prefix)
            ids.append(tuple(pre + [tokenizer.mask_token_id] + _plain_ids(tokenizer, q.suffix) + tail))
            readout.append(len(pre))
        insert_at = len(head)
    else:
        head = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
        for q in batch.queries:
            seq = head + _plain_ids(tokenizer, q.prefix)
            if not seq:
                raise VerbalizerError("a causal LM needs some text before the label slot")
            ids.append(tuple(seq))
            readout.append(len(seq) - 1)
        insert_at = len(head)
    if label_ids is None:
        label_ids = label_token_ids(tokenizer, batch.label_words)
    return EncodedBatch(tuple(ids), np.array(readout, dtype=np.int64), insert_at, label_ids)
