"""Per-key removal generations: a remove that returns wins over every load that began before it.

A load takes a *ticket* (the current generation) when it starts and may store its result only if
its key was not removed after the ticket was taken. Invariants:

- ``removed(key)`` is called before ``remove`` returns; every later ``may_store(key, ticket)`` for a
  ticket taken before it is False.
- Memory is bounded by the loads in flight: a removal record is needed only while some load holds
  an older ticket, so the records are dropped once no such load is left.
- Entries handed over by a leaving peer carry no ticket; for them a short list of recent removes
  (*tombstones*, at most ``max_tombstones``, oldest dropped first) says "removed at time t", so
  a put that was on its way while the key was removed does not bring the old value back.

Pure logic: no clock reads (callers pass the time), no I/O; one per cache group.
"""

from __future__ import annotations

from collections import Counter, OrderedDict


class Generations:
    """Removal generations of one group's keys."""

    __slots__ = ("_max_tombstones", "_open", "_removed", "_seq", "_tombstones")

    def __init__(self, max_tombstones: int = 4096) -> None:
        self._seq = 0
        self._max_tombstones = max_tombstones
        self._tombstones: OrderedDict[str, float] = OrderedDict()  # key -> time of its remove
        self._removed: dict[str, int] = {}  # key -> generation of its last remove
        self._open: Counter[int] = Counter()  # ticket -> loads holding it

    def begin(self) -> int:
        """A ticket for a load starting now; hand it back with :meth:`end`."""
        ticket = self._seq
        self._open[ticket] += 1
        return ticket

    def end(self, ticket: int) -> None:
        """The load holding ``ticket`` is over (stored or not)."""
        left = self._open[ticket] - 1
        if left > 0:
            self._open[ticket] = left
            return
        del self._open[ticket]
        if not self._open:
            self._removed.clear()
        elif len(self._removed) > 2 * len(self._open) + 64:
            # Loads keep overlapping: drop the records no open ticket is older than.
            oldest = min(self._open)
            self._removed = {k: g for k, g in self._removed.items() if g > oldest}

    def removed(self, key: str, now: float) -> None:
        """``key`` was removed at ``now``: loads that began earlier must not store it."""
        self._seq += 1
        if self._open:
            self._removed[key] = self._seq
        self._tombstones.pop(key, None)
        self._tombstones[key] = now
        if len(self._tombstones) > self._max_tombstones:
            self._tombstones.popitem(last=False)

    def removed_since(self, key: str, since: float) -> bool:
        """Whether ``key`` was removed at or after ``since`` (as far as the tombstones remember)."""
        at = self._tombstones.get(key)
        return at is not None and at >= since

    def may_store(self, key: str, ticket: int) -> bool:
        """Whether a load that took ``ticket`` may store its result for ``key``."""
        return self._removed.get(key, -1) <= ticket

    def __len__(self) -> int:
        return len(self._removed)
