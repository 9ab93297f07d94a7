"""Which values fetched from their owner become hot copies: a TinyLFU-style admission policy.

groupcache keeps a fetched value as a hot copy with a fixed probability (a coin toss): a key asked
for a thousand times a second is as likely to be dropped as one asked for once, and a hot cache
that is full keeps whatever happened to land last. TinyLFU (Einziger, Friedman, Manes, "TinyLFU: A
Highly Efficient Cache Admission Policy", 2017; the policy behind Caffeine and Ristretto) instead
counts how often each key is asked for in a small approximate sketch, and admits a candidate into a
full cache only when it is asked for more often than the entry it would evict.

The sketch here is a count-min sketch of four rows of 4-bit saturating counters (two per byte).
Each row is indexed by a different 16-bit slice of the key's 64-bit hash, so one ``hash()`` (cached
by ``str``) serves all rows. The estimate of a key is the minimum of its four counters: never less
than the true count since the last aging (collisions only add), capped at 15.

Aging: after ``sample_size`` (ten times the counters per row) recorded accesses every counter is
halved, so the sketch follows a changing popularity instead of remembering last hour's favourites.
Aging is by count, not by clock: it adapts to the request rate and needs no timer.

Hash flooding: an attacker who could make one key's counters collide with a victim's could keep
a hot key out. ``hash()`` of a ``str`` is keyed per process (``PYTHONHASHSEED``) so collisions
cannot be aimed from outside; and, as in Caffeine, a warm candidate that loses is still admitted
with a small probability drawn from the injected RNG, so no key can be kept out for ever.

Pure logic, no I/O: the group calls :meth:`record` on the accesses that concern hot copies and
:meth:`admit` when a candidate would have to displace a victim.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._lru import LRUCache

ROWS = 4
MAX_COUNT = 15  # 4-bit counters
MIN_WIDTH = 1 << 8
MAX_WIDTH = 1 << 16  # a row index is a 16-bit slice of the hash
# Halving two packed nibbles at once: each nibble shifted right by one, the carry masked off.
_HALVE = bytes(((b >> 1) & 0x77) for b in range(256))
WARM = 6  # a candidate this frequent may win against a stronger victim by chance (see admit)
LUCKY_ONE_IN = 128
MAX_VICTIMS = 8  # a candidate needing more evictions than this (a huge value) is not admitted


def _width_for(expected_keys: int) -> int:
    width = MIN_WIDTH
    while width < expected_keys and width < MAX_WIDTH:
        width <<= 1
    return width


class FrequencySketch:
    """A count-min sketch of 4-bit counters with periodic halving; estimates recent frequency."""

    __slots__ = ("_mask", "_sample_size", "_samples", "_table", "_width", "resets")

    def __init__(self, expected_keys: int) -> None:
        """Size the rows for about ``expected_keys`` distinct keys (a power of two, 256..65536)."""
        width = _width_for(expected_keys)
        self._width = width
        self._mask = width - 1
        self._table = bytearray(ROWS * width // 2)  # counter i lives in nibble i & 1 of byte i >> 1
        self._sample_size = 10 * width
        self._samples = 0
        self.resets = 0  # how many times the counters were halved

    @property
    def width(self) -> int:
        """Counters per row."""
        return self._width

    def indexes(self, key: str) -> tuple[int, int, int, int]:
        """The four counters of ``key`` (fixed for the sketch's life: a caller may keep them)."""
        return self._indexes(key)

    def _indexes(self, key: str) -> tuple[int, int, int, int]:
        h = hash(key)
        m = self._mask
        w = self._width
        return (
            h & m,
            w + ((h >> 16) & m),
            2 * w + ((h >> 32) & m),
            3 * w + ((h >> 48) & m),
        )

    def record(self, key: str) -> None:
        """Count one access to ``key``; halve every counter once enough accesses were counted."""
        self.record_at(self._indexes(key))

    def record_at(self, indexes: tuple[int, int, int, int]) -> bool:
        """`record` for a key whose `indexes` are known; True when its four counters are all at
        the maximum afterwards (until the next halving, `tick` then does the same work)."""
        table = self._table
        full = True
        for i in indexes:
            byte = table[i >> 1]
            shift = (i & 1) << 2
            count = (byte >> shift) & 0xF
            if count < MAX_COUNT:
                table[i >> 1] = byte + (1 << shift)
                full = full and count + 1 == MAX_COUNT
        self._samples += 1
        if self._samples >= self._sample_size:
            self._age()
            return False
        return full

    def tick(self) -> None:
        """Count one access to a key whose counters are all at the maximum (`record_at` said so,
        no halving since): only the access count that drives the halving moves."""
        self._samples += 1
        if self._samples >= self._sample_size:
            self._age()

    def estimate(self, key: str) -> int:
        """How often ``key`` was recorded since the last halvings (an upper bound, at most 15)."""
        # Unrolled (no generator): two estimates per admission decision, on a non-owner's hit
        # path for every value fetched from its owner.
        t = self._table
        a, b, c, d = self._indexes(key)
        return min(
            (t[a >> 1] >> ((a & 1) << 2)) & 0xF,
            (t[b >> 1] >> ((b & 1) << 2)) & 0xF,
            (t[c >> 1] >> ((c & 1) << 2)) & 0xF,
            (t[d >> 1] >> ((d & 1) << 2)) & 0xF,
        )

    def _age(self) -> None:
        self._table = bytearray(self._table.translate(_HALVE))
        # Halving also halves what was counted since the last aging (TinyLFU's reset).
        self._samples //= 2
        self.resets += 1


class HotAdmission:
    """The admission decision for a group's hot cache, on a frequency sketch and an injected RNG."""

    __slots__ = ("_rng", "sketch")

    def __init__(self, expected_keys: int, rng: random.Random) -> None:
        """``expected_keys``: about how many distinct keys the hot cache can hold."""
        self.sketch = FrequencySketch(expected_keys)
        self._rng = rng

    def record(self, key: str) -> None:
        """Count an access that concerns a hot copy (a hot hit, or a fetch from the owner)."""
        self.sketch.record(key)

    def admit(self, candidate: str, victim: str) -> bool:
        """Whether ``candidate`` should replace ``victim``, the hot cache's least recently used.

        The candidate wins when it is asked for strictly more often. A warm candidate that loses
        still wins once in ``LUCKY_ONE_IN`` (so colliding counters cannot shut a key out).
        """
        return self._beats(self.sketch.estimate(candidate), victim)

    def _beats(self, wanted: int, victim: str) -> bool:
        """`admit` for a candidate whose estimate ``wanted`` is known."""
        if wanted > self.sketch.estimate(victim):
            return True
        return wanted >= WARM and self._rng.randrange(LUCKY_ONE_IN) == 0

    def make_room(self, hot: LRUCache, key: str, size: int, budget: int) -> bool:
        """Evict from ``hot`` so ``key`` (``size`` bytes) fits in ``budget``; False: do not admit.

        Expired entries go for free; every live victim must lose to the candidate (:meth:`admit`).
        Victims are chosen first and evicted only if the candidate beats them all, so a rejected
        candidate costs the hot cache nothing. At most ``MAX_VICTIMS`` entries make way for one.
        """
        if size > budget:
            return False
        need = hot.bytes - hot.size_of(key) + size - budget
        if need <= 0:
            return True
        victims: list[str] = []
        wanted = -1  # the candidate's estimate, read once the first live victim needs it
        for victim, victim_size, live in hot.oldest():
            if len(victims) == MAX_VICTIMS:
                return False
            if live:
                if wanted < 0:
                    wanted = self.sketch.estimate(key)
                if not self._beats(wanted, victim):
                    return False
            if victim == key:
                continue  # a stale copy of the candidate itself: replaced by add
            victims.append(victim)
            need -= victim_size
            if need <= 0:
                break
        else:
            return False
        for victim in victims:
            hot.evict(victim)
        return True
