"""One place for each list of things: a named registry that everything else reads.

A ``Registry`` maps names to entries (a function, a model type, a document
type). The spec's allowed values, the CLI's choices, the tables' row order and
the figures' colours are all derived from a registry, so adding an entry is one
edit in one file, and an unknown name raises an error that lists what is
allowed, at the first place it is looked up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Entries by name, in registration order. ``what`` names the option in
    error messages ("goodness", "model")."""

    def __init__(self, what: str, entries: Mapping[str, T] | None = None):
        self.what = what
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove an entry (a plug-in's, or a test's); KeyError if it is not registered."""
        return self._entries.pop(name)

    def lookup(self, name: Any) -> T:
        """The entry named ``name``; ValueError naming what is allowed otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"{self.what} must be one of {', '.join(self._entries)}; got {name!r}") from None

    def literal(self) -> Any:
        """``Literal["a", "b", ...]`` of the names, for pydantic fields."""
        return Literal[tuple(self._entries)]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {list(self._entries)})"
