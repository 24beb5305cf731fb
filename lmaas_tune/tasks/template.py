"""Prompt templates: a string with named input slots and one ``{mask}`` label slot."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lmaas_tune.backends.base import ModelKind, Query
from lmaas_tune.errors import TemplateError

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
    """A template and the label words it is read with, in label order."""

    template: Template
    label_words: tuple[str, ...]

    def __post_init__(self) -> None:
        from lmaas_tune.errors import VerbalizerError

        words = tuple(w.strip() for w in self.label_words)
        object.__setattr__(self, "label_words", words)
        if len(words) < 2:
            raise VerbalizerError(f"need at least two label words; got {list(words)}")
        if any(not w for w in words):
            raise VerbalizerError(f"label words must not be empty; got {list(self.label_words)}")
        dupes = sorted({w for w in words if words.count(w) > 1})
        if dupes:
            raise VerbalizerError(f"label words repeat: {dupes}; give one distinct word per label")

    @classmethod
    def of(cls, template: str, label_words: Sequence[str] | str) -> "PromptFormat":
        if isinstance(label_words, str):
            label_words = tuple(w for w in label_words.split(",") if w.strip())
        return cls(Template(template), tuple(label_words))
