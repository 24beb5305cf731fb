"""Prompt templates: a string with named input slots and one ``{mask}`` label slot."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

from lmaas_tune.backends.base import ModelKind, Query
from lmaas_tune.errors import TemplateError
from .verbalizer import Verbalizer, VerbalizerLike

MASK = "mask"


@dataclass(frozen=True)
class Template:
    """``"{sentence} . It was {mask} ."``: input fields by name, the label slot as ``{mask}``.

    The soft prompt is always placed before the template. Whitespace right before ``{mask}`` is
    dropped, because label words are read in their leading-space form. ``\\n`` in a template
    given on the command line means a newline.
    """

    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", self.text.replace("\\n", "\n"))
        try:
            parts = list(string.Formatter().parse(self.text))
        except ValueError as exc:
            raise TemplateError(f"template {self.text!r} is malformed: {exc}. Use {{name}} slots.") from exc
        names = [name for _, name, _, _ in parts if name is not None]
        if any(name == "" or name.isdigit() for name in names):
            raise TemplateError(
                f"template {self.text!r} has an unnamed slot; name every slot, e.g. {{sentence}}"
            )
        if names.count(MASK) != 1:
            raise TemplateError(
                f"template {self.text!r} must contain exactly one {{mask}} slot (the label); "
                f"found {names.count(MASK)}"
            )
        if len([n for n in names if n != MASK]) == 0:
            raise TemplateError(
                f"template {self.text!r} has no input slot; add one such as {{sentence}}"
            )

    @property
    def fields(self) -> tuple[str, ...]:
        """Input slot names in order of first appearance."""
        seen: list[str] = []
        for _, name, _, _ in string.Formatter().parse(self.text):
            if name and name != MASK and name not in seen:
                seen.append(name)
        return tuple(seen)

    def check_kind(self, kind: ModelKind) -> None:
        if kind is ModelKind.CAUSAL:
            after = self.text.split("{" + MASK + "}", 1)[1]
            if after.strip():
                raise TemplateError(
                    f"template {self.text!r} has text after {{mask}}; a causal LM reads the label as "
                    f"the next token, so {{mask}} must end the template (e.g. "
                    f"'{{sentence}} It was {{mask}}')"
                )

    def render(self, values: Mapping[str, str]) -> Query:
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise TemplateError(
                f"template {self.text!r} needs field(s) {missing}; the data provides {sorted(values)}"
            )
        marker = "\x00MASK\x00"
        filled = self.text.format(**{**{k: str(v).strip() for k, v in values.items()}, MASK: marker})
        prefix, suffix = filled.split(marker, 1)
        return Query(prefix=prefix.rstrip(" "), suffix=suffix.rstrip())


@dataclass(frozen=True)
class PromptFormat:
    """A template and the label words it is read with: one or more words per label, in label order."""

    template: Template
    verbalizer: Verbalizer

    @property
    def label_words(self) -> tuple[str, ...]:
        """Every label's words, label after label: the words a backend scores."""
        return self.verbalizer.words

    @classmethod
    def of(cls, template: str, label_words: VerbalizerLike) -> "PromptFormat":
        """``label_words``: ``"bad,great"``, ``"negative|bad,positive|good"`` (``|`` joins the words
        of one label), one entry per label, or a :class:`Verbalizer`."""
        return cls(Template(template), Verbalizer.of(label_words))
