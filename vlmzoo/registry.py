"""Small string-keyed registries filled by decorators (projectors, fusion modules, families).

docs/design.md §3: blocks are looked up by key; an unknown key raises ``ValueError`` naming the valid keys,
so there are no ``if/elif`` chains on strings anywhere in the package.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named ``dict`` of builders with a decorator to fill it and a clear error on unknown keys."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is already registered")
            self._entries[key] = entry
            return entry

        return decorator

    def get(self, key: str) -> T:
        if not isinstance(key, str):
            raise TypeError(f"{self.kind} key must be a string, got {type(key).__name__}")
        try:
            return self._entries[key]
        except KeyError:
            valid = ", ".join(sorted(self._entries))
            raise ValueError(f"unknown {self.kind} '{key}'; valid keys: {valid}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def keys(self) -> list[str]:
        return sorted(self._entries)
