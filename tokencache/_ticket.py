"""A hit ticket: a caller's handle on one live cache entry, to answer repeats of its value itself.

A server that turns a cached value into response bytes (the proxy's ready hits) keeps those bytes
with a ticket from `Group.ticket` and, for each repeat, asks `HitTicket.hit` instead of looking the
key up again. `hit` is False once the entry left the cache — removed (a cluster-wide ``remove``
included), replaced or evicted: the entry's own ``live`` flag, no lookup — or, for a hot copy, once
the main cache holds the key (a peek reads it first); otherwise it counts the
hit exactly as a peek would: the group's and the cache's counters, the entry's recency, and for a
hot copy the admission policy's frequency. Expiry is the caller's to check, against `expires_at` on
`Group.clock`: it usually knows an earlier bound (when its own bytes would change).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._admission import FrequencySketch
    from ._lru import LRUCache, _Item
    from ._stats import GroupStats

__all__ = ["HitTicket"]


class HitTicket:
    """One live entry of a group's cache (made by `Group.ticket`; see the module docstring)."""

    __slots__ = (
        "_cache",
        "_full",
        "_indexes",
        "_item",
        "_key",
        "_missed",
        "_sketch",
        "_stats",
        "expires_at",
    )

    def __init__(
        self,
        cache: LRUCache,
        item: _Item,
        key: str,
        stats: GroupStats,
        sketch: FrequencySketch | None,
        missed: LRUCache | None = None,
    ) -> None:
        self._cache = cache
        # A hot copy's peek first misses the main cache (a get counted there): `missed`.
        self._missed = missed
        self._item = item
        self._key = key
        self._stats = stats
        # A hot copy's hits are counted in the admission's sketch, at the key's counters (worked
        # out once); once they are all at the maximum, until the next halving (`resets`), a hit
        # only moves the sketch's access count (`tick`): the same result for less work.
        self._sketch = sketch
        self._indexes = sketch.indexes(key) if sketch is not None else (0, 0, 0, 0)
        self._full = -1
        # When the entry expires, on the group's clock (None: never).
        self.expires_at = item.expires_at

    def hit(self) -> bool:
        """Count one more hit on the entry, as a peek would; False (nothing counted) once the
        entry is no longer in the cache, or, for a hot copy, once the main cache (which a peek
        reads first) holds the key."""
        if not self._item.live:
            return False
        missed = self._missed
        if missed is not None:
            if self._key in missed:
                return False  # the main cache has the key now: a peek may answer from it
            missed.stats.gets += 1
        # LRUCache.touch inlined (the ticket is the cache's friend, as `item` shows): the call
        # was ~30 ns of a ~900 ns ready hit.
        cache = self._cache
        cache._items.move_to_end(self._key)
        counts = cache.stats
        counts.gets += 1
        counts.hits += 1
        stats = self._stats
        stats.gets += 1
        stats.cache_hits += 1
        sketch = self._sketch
        if sketch is not None:  # a hot copy: its frequency decides what stays hot
            if self._full == sketch.resets:
                sketch.tick()
            elif sketch.record_at(self._indexes):
                self._full = sketch.resets
        return True
