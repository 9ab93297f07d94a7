"""A byte-bounded LRU cache whose entries carry an expiry time.

House rules:

- The cache never answers with an expired entry (``get``); expired entries may linger until they are
  purged or evicted, and ``peek_stale`` may show them for ``stale_window`` seconds after expiry
  (stale-if-error, which the caller must label as stale).
- Size is counted in bytes close to what the entry really costs the process (key and value objects
  plus a fixed per-entry overhead measured for CPython), so a byte budget bounds RSS.
- When room is needed, expired entries go first, then the least recently used.
- An entry may be a *marker* (stored, not a value: see ``tokencache.Kind``): ``get``,
  ``get_value`` and ``peek_stale`` never return one; ``lookup`` returns it with its flag.
- Expiries sit in a min-heap with lazy deletion: a heap record is valid only while its ``seq`` still
  matches the entry's. The heap is rebuilt when dead records outnumber live ones.

Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import heapq
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from ._clock import Clock

# Measured on CPython 3.11 x86_64 (see `make bench`, "RSS per entry"): the _Item object with its
# slots, its float expiry, the OrderedDict's hash-table slot and linked-list node, and the heap tuple.
ENTRY_OVERHEAD = 240


class _Item:
    """One entry. `live` turns False when it leaves the cache (removed, replaced or evicted), so a
    holder of the item (a `tokencache.HitTicket`) knows without a lookup."""

    __slots__ = ("expires_at", "live", "marker", "seq", "size", "value")

    def __init__(
        self, value: bytes, expires_at: float | None, size: int, seq: int, marker: bool
    ) -> None:
        self.value = value
        self.expires_at = expires_at
        self.size = size
        self.seq = seq
        self.marker = marker
        self.live = True


def entry_size(key: str, value: bytes) -> int:
    """The number of bytes an entry is charged for."""
    return sys.getsizeof(key) + sys.getsizeof(value) + ENTRY_OVERHEAD


@dataclass
class CacheStats:
    """Counters of one cache (main or hot). Plain ints, read at scrape time."""

    gets: int = 0
    hits: int = 0
    evictions: int = 0
    evictions_nonexpired: int = 0


class LRUCache:
    """A byte-counted LRU of ``str -> bytes`` with per-entry expiry on an injected clock."""

    def __init__(self, clock: Clock, stale_window: float = 0.0) -> None:
        self._clock = clock
        self._now = clock.now  # bound once: the hit path reads the clock on every get
        self._stale_window = stale_window
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._heap: list[tuple[float, int, str]] = []  # (expires_at, seq, key); lazy deletion
        self._seq = 0
        self.bytes = 0  # sum of _Item.size over _items
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str, min_ttl: float = 0.0) -> tuple[bytes, float | None] | None:
        """Return ``(value, remaining ttl or None)`` for a live entry with at least ``min_ttl`` left.

        Counts a get, and a hit when found; a hit becomes the most recently used.
        """
        stats = self.stats
        stats.gets += 1
        item = self._items.get(key)
        if item is None or item.marker:
            return None
        expires_at = item.expires_at
        if expires_at is None:
            ttl = None
        else:
            ttl = expires_at - self._now()
            if ttl <= 0 or ttl < min_ttl:
                return None
        self._items.move_to_end(key)
        stats.hits += 1
        return item.value, ttl

    def get_value(self, key: str) -> bytes | None:
        """The hot-path form of :meth:`get`: the value of a live entry, or ``None``."""
        self.stats.gets += 1
        item = self._items.get(key)
        if item is None or item.marker:
            return None
        expires_at = item.expires_at
        if expires_at is not None and expires_at <= self._now():
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        return item.value

    def item(self, key: str) -> _Item | None:
        """The entry of ``key`` as it is (expired and markers included), without counting or
        reordering: what a `tokencache.HitTicket` holds."""
        return self._items.get(key)

    def touch(self, key: str) -> None:
        """Make ``key`` (present) the most recently used and count a get and a hit, as
        :meth:`get` does for a hit."""
        self._items.move_to_end(key)
        stats = self.stats
        stats.gets += 1
        stats.hits += 1

    def peek_stale(self, key: str) -> tuple[bytes, float] | None:
        """Return ``(value, seconds since expiry)`` for an expired entry still in the stale window."""
        item = self._items.get(key)
        if item is None or item.expires_at is None or item.marker:
            return None
        age = self._clock.now() - item.expires_at
        if 0 <= age <= self._stale_window:
            return item.value, age
        return None

    def lookup(self, key: str, min_ttl: float = 0.0) -> tuple[bytes, float | None, bool] | None:
        """Like :meth:`get`, markers included: ``(value, remaining ttl or None, is marker)``."""
        self.stats.gets += 1
        item = self._items.get(key)
        if item is None:
            return None
        ttl = None if item.expires_at is None else item.expires_at - self._now()
        if ttl is not None and (ttl <= 0 or ttl < min_ttl):
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        return item.value, ttl, item.marker

    def live_entries(self) -> Iterator[tuple[str, bytes, float | None, bool]]:
        """``(key, value, remaining ttl or None, is marker)`` of every live entry, most recently
        used first, without counting or reordering (a leaving process hands them over)."""
        now = self._now()
        for key in reversed(list(self._items)):
            item = self._items.get(key)
            if item is None:
                continue
            ttl = None if item.expires_at is None else item.expires_at - now
            if ttl is None or ttl > 0:
                yield key, item.value, ttl, item.marker

    def value_of(self, key: str) -> bytes | None:
        """The stored value whatever its expiry, without counting or reordering (for comparisons)."""
        item = self._items.get(key)
        return None if item is None else item.value

    def oldest(self) -> Iterator[tuple[str, int, bool]]:
        """``(key, size, live)`` from the least recently used on, without counting or reordering.

        For an admission policy choosing victims; do not change the cache while iterating.
        """
        now = self._clock.now()
        for key, item in self._items.items():
            expires_at = item.expires_at
            yield key, item.size, expires_at is None or expires_at > now

    def add(self, key: str, value: bytes, ttl: float | None, *, marker: bool = False) -> int:
        """Store ``value`` under ``key`` for ``ttl`` seconds (``None``: no expiry); return its size."""
        self._remove(key)
        self._seq += 1
        now = self._clock.now()
        expires_at = None if ttl is None else now + ttl
        size = entry_size(key, value)
        self._items[key] = _Item(value, expires_at, size, self._seq, marker)
        self.bytes += size
        if expires_at is not None:
            heapq.heappush(self._heap, (expires_at, self._seq, key))
        # Opportunistic purge keeps dead entries from piling up between periodic purges.
        self._purge(now, limit=2)
        return size

    def remove(self, key: str) -> bool:
        """Remove ``key``; return whether it was there."""
        return self._remove(key)

    def size_of(self, key: str) -> int:
        """The bytes ``key`` is charged for (0 when absent)."""
        item = self._items.get(key)
        return 0 if item is None else item.size

    def evict(self, key: str) -> bool:
        """Remove ``key`` to make room (counted as an eviction); return whether it was there."""
        item = self._items.get(key)
        if item is None:
            return False
        self._remove(key)
        self.stats.evictions += 1
        if item.expires_at is None or item.expires_at > self._clock.now():
            self.stats.evictions_nonexpired += 1
        return True

    def evict_expired_one(self) -> bool:
        """Evict one expired entry (stale ones included); False when none has expired."""
        now = self._clock.now()
        heap = self._heap
        while heap:
            expires_at, seq, key = heap[0]
            if expires_at > now:
                return False
            heapq.heappop(heap)
            item = self._items.get(key)
            if item is not None and item.seq == seq:
                self._remove(key)
                self.stats.evictions += 1
                return True
        return False

    def evict_one(self) -> bool:
        """Evict one entry: an expired one if any, else the least recently used. False if empty."""
        if not self._items:
            return False
        if self.evict_expired_one():
            return True
        now = self._clock.now()
        _, item = self._items.popitem(last=False)
        item.live = False
        self.bytes -= item.size
        self.stats.evictions += 1
        if item.expires_at is None or item.expires_at > now:
            self.stats.evictions_nonexpired += 1
        return True

    def purge_expired(self) -> int:
        """Remove every entry that expired more than ``stale_window`` ago; return how many."""
        return self._purge(self._clock.now(), limit=None)

    def _purge(self, now: float, limit: int | None) -> int:
        horizon = now - self._stale_window
        removed = 0
        heap = self._heap
        while heap and heap[0][0] <= horizon and (limit is None or removed < limit):
            _, seq, key = heapq.heappop(heap)
            item = self._items.get(key)
            if item is not None and item.seq == seq:
                self._remove(key)
                removed += 1
        if len(heap) > 2 * len(self._items) + 64:
            self._heap = [rec for rec in heap if self._is_live_record(rec)]
            heapq.heapify(self._heap)
        return removed

    def _is_live_record(self, record: tuple[float, int, str]) -> bool:
        item = self._items.get(record[2])
        return item is not None and item.seq == record[1]

    def _remove(self, key: str) -> bool:
        item = self._items.pop(key, None)
        if item is None:
            return False
        item.live = False
        self.bytes -= item.size
        return True
