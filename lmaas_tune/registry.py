"""Registries by name: every pluggable family (tasks, losses, models, presets) is one of these."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, UnknownNameError

T = TypeVar("T")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "").replace(".", "")


class Registry(Generic[T]):
    """A name -> object map with aliases, forgiving spelling (``SST-2`` == ``sst2``) and helpful misses."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._keys: dict[str, str] = {}

    def add(self, name: str, item: T, *, aliases: tuple[str, ...] = ()) -> T:
        for key in (name, *aliases):
            norm = _normalise(key)
            if self._keys.get(norm, name) != name:
                raise ConfigError(f"{self.kind} {key!r} is already registered")
            self._keys[norm] = name
        self._items[name] = item
        return item

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(item: T) -> T:
            return self.add(name, item, aliases=aliases)

        return deco

    def get(self, name: str) -> T:
        key = self._keys.get(_normalise(name))
        if key is None:
            raise UnknownNameError(self.miss_message(name))
        return self._items[key]

    def canonical(self, name: str) -> str:
        self.get(name)
        return self._keys[_normalise(name)]

    def miss_message(self, name: str) -> str:
        near = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self._items)}."

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _normalise(name) in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())
