"""A memo bounded in entries and in bytes: what the hit path remembers (request heads by their
bytes, ready hit responses by key).

When an entry would not fit, the oldest eighth goes (first in, first out; at least what the new
entry needs), so a working set a little larger than the memo still finds most of its entries and
eviction costs one pass per eighth, not one per insertion. `entries` is the plain dict, for the
hot path's ``get``; only `put` and `pop` change it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Memo"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """`max_entries` entries and `max_bytes` by `cost` at most (see the module docstring)."""

    __slots__ = ("_cost", "_max_bytes", "_max_entries", "bytes", "entries")

    def __init__(self, cost: Callable[[K, V], int], max_entries: int, max_bytes: int) -> None:
        self.entries: dict[K, V] = {}
        self.bytes = 0  # the sum of `cost` over the entries
        self._cost = cost
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    def put(self, key: K, value: V, extra: int = 0) -> bool:
        """Remember `value` under `key` (the newest entry); False (and `key` forgotten) when it
        can never fit. `extra`: bytes that come with this entry beyond its `cost` (a part it
        shares with later entries, see `proxy._head_memo`), counted in `bytes` from now on; the
        caller takes them off again (`release`) when the last entry using that part goes."""
        cost = self._cost(key, value) + extra
        self.pop(key)  # (also when the new value does not fit: the old one is no longer right)
        if not self._max_entries or cost > self._max_bytes:
            return False
        entries = self.entries
        if len(entries) >= self._max_entries or self.bytes + cost > self._max_bytes:
            for old in list(itertools.islice(entries, max(1, len(entries) // 8))):
                self.pop(old)
            while entries and self.bytes + cost > self._max_bytes:
                self.pop(next(iter(entries)))
            if self.bytes + cost > self._max_bytes:
                return False  # bytes no entry holds alone (a shared part being put) do not fit
        entries[key] = value
        self.bytes += cost
        return True

    def renewed(self, key: K, grown: int) -> None:
        """`key`'s value (remembered) was changed in place and its cost by `grown` bytes: count
        that and make it the newest entry; older entries go if it no longer fits."""
        entries = self.entries
        entries[key] = entries.pop(key)
        self.bytes += grown
        while self.bytes > self._max_bytes and entries:
            self.pop(next(iter(entries)))

    def release(self, extra: int) -> None:
        """Stop counting `extra` bytes given to `put` (their last user is gone)."""
        self.bytes -= extra

    def pop(self, key: K) -> V | None:
        """Forget `key`; its value, or None when it was not remembered."""
        value = self.entries.pop(key, None)
        if value is not None:
            self.bytes -= self._cost(key, value)
        return value
