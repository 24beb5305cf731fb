"""Label words grouped by label: which words the model is read at, and how their scores make a label's.

A verbalizer maps each label of a task to one or more label words. Backends score a flat tuple of
words (``ScoringBatch.label_words``, every label's words in label order) and return scores
``[..., W]``; :meth:`Verbalizer.aggregate` turns them into label scores ``[..., C]``. That is the
one place where word scores become label scores: the train loss, the dev metric, the test
evaluation and ``predict`` all go through it.

On the command line and in a run's record, ``,`` separates labels and ``|`` the words of one label:
``negative|bad|terrible,positive|good|great``. The first word of a label names it (``predict``'s
``label``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from lmaas_tune.errors import VerbalizerError

#: separates labels
LABEL_SEP = ","
#: separates the words of one label
WORD_SEP = "|"
_SYNTAX = (f"'{LABEL_SEP}' separates labels, '{WORD_SEP}' the words of one label "
           f"(e.g. 'negative{WORD_SEP}bad{LABEL_SEP}positive{WORD_SEP}good')")

#: what :meth:`Verbalizer.of` reads: a verbalizer, ``"a|b,c"``, ``["a|b", "c"]`` or ``[["a", "b"], ["c"]]``
VerbalizerLike = Union["Verbalizer", str, Sequence[Union[str, Sequence[str]]]]


@dataclass(frozen=True)
class Verbalizer:
    """The label words of each label, in label order (``classes[c]``: the words of label ``c``).

    Every label has at least one word, there are at least two labels, and no word appears twice
    (in one label or in two): a word shared by two labels could not tell them apart.
    """

    classes: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        classes = tuple(tuple(w.strip() for w in words) for words in self.classes)
        object.__setattr__(self, "classes", classes)
        shown = [WORD_SEP.join(words) for words in classes]
        if len(classes) < 2:
            if sum(len(words) for words in classes) < 2:
                raise VerbalizerError(f"need at least two label words; got {shown}")
            raise VerbalizerError(f"need label words for at least two labels; got one label {shown}: {_SYNTAX}")
        for c, words in enumerate(classes, 1):
            if not any(words):
                raise VerbalizerError(
                    f"label {c} of {shown} has no label words (an empty entry); give every label at least one "
                    f"word: {_SYNTAX}")
            if not all(words):
                raise VerbalizerError(
                    f"label {c} of {shown} has an empty label word ({shown[c - 1]!r}); drop the stray "
                    f"'{WORD_SEP}': {_SYNTAX}")
        flat = [w for words in classes for w in words]
        dupes = sorted({w for w in flat if flat.count(w) > 1})
        if dupes:
            raise VerbalizerError(f"label words repeat: {dupes}; give each word once, to one label only")

    @classmethod
    def of(cls, value: VerbalizerLike) -> "Verbalizer":
        """A verbalizer from the command-line text ``"negative|bad,positive|good"``, one entry per
        label (``["negative|bad", "positive|good"]``), or one sequence of words per label."""
        if isinstance(value, Verbalizer):
            return value
        entries: Sequence[str | Sequence[str]] = value.split(LABEL_SEP) if isinstance(value, str) else value
        return cls(tuple(tuple(e.split(WORD_SEP)) if isinstance(e, str) else tuple(e) for e in entries))

    @property
    def words(self) -> tuple[str, ...]:
        """Every label's words, label after label: what a backend scores (``ScoringBatch.label_words``)."""
        return tuple(w for words in self.classes for w in words)

    @property
    def names(self) -> tuple[str, ...]:
        """The first word of each label: the name ``predict`` gives it."""
        return tuple(words[0] for words in self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def single(self) -> bool:
        """One word per label (the paper's verbalizers): :meth:`aggregate` is the identity."""
        return all(len(words) == 1 for words in self.classes)

    def entries(self) -> tuple[str, ...]:
        """One ``"a|b"`` entry per label: how a run's record stores the verbalizer."""
        return tuple(WORD_SEP.join(words) for words in self.classes)

    def __str__(self) -> str:
        return LABEL_SEP.join(self.entries())

    def aggregate(self, scores: np.ndarray) -> np.ndarray:
        """Label scores ``[..., C]`` from word scores ``[..., W]`` (W = ``len(self.words)``): the
        log-sum-exp of each label's words.

        Why log-sum-exp: a backend's scores are logits (a local model, an lmaas-tune service) or
        log-probabilities (a vLLM server), and for one input row the two differ by a constant,
        the log of the softmax's normaliser. log-sum-exp commutes with adding a per-row constant,
        ``lse(x + k) = lse(x) + k``, so the label scores also differ by only that constant, and the
        softmax over labels, the cross-entropy, the hinge loss and the argmax are the same for both.
        For logits it also means what it says: the softmax over labels gives each label the total
        probability of its words, renormalised over all label words. (A mean of the words' scores
        would be shift-invariant too, but would score a label by a geometric mean of its words'
        probabilities, so one unlikely synonym would drag the label down.)

        With one word per label it returns ``scores`` itself, unchanged bit for bit. A label of one
        word gets that word's score exactly (in float64); labels of several words are computed in
        float64 with the maximum subtracted first, so large scores do not overflow.
        """
        scores = np.asarray(scores)
        if scores.shape[-1] != len(self.words):
            raise ValueError(f"scores have {scores.shape[-1]} label words on their last axis; "
                             f"this verbalizer has {len(self.words)}")
        if self.single:
            return scores
        x = scores.astype(np.float64)
        bounds = np.cumsum([0, *(len(words) for words in self.classes)])
        out = np.empty(x.shape[:-1] + (self.num_classes,), dtype=np.float64)
        for c in range(self.num_classes):
            part = x[..., bounds[c]:bounds[c + 1]]
            if part.shape[-1] == 1:
                out[..., c] = part[..., 0]
                continue
            top = part.max(axis=-1, keepdims=True)
            shift = np.where(np.isfinite(top), top, 0.0)  # all -inf stays -inf; nan stays nan
            with np.errstate(divide="ignore"):
                out[..., c] = (shift + np.log(np.exp(part - shift).sum(axis=-1, keepdims=True)))[..., 0]
        return out
