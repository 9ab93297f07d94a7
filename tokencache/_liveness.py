"""Which in-flight peer requests are dead and which merely slow, without I/O or a real clock.

A request is *alive* while frames for it keep arriving: the owner sends a heartbeat frame for every
request it is still working on (a third of the caller's liveness timeout apart, the interval the
caller asked for in its hello). So:

- no frame for a request within ``liveness`` seconds → the peer is frozen, gone or cut off: the
  whole connection is declared dead (every request on it fails as unreachable, the connection is
  dropped), whether it was pooled for an hour or opened a moment ago;
- frames keep coming but no answer within the request's maximum wait → the owner is alive and slow:
  only that request fails, and not as unreachable (slow is not dead).
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class _Pending(Generic[T]):
    __slots__ = ("deadline", "last_seen", "waiter")

    def __init__(self, waiter: T, now: float, deadline: float) -> None:
        self.waiter = waiter
        self.last_seen = now
        self.deadline = deadline


class InFlight(Generic[T]):
    """The requests waiting on one connection, by request id, with their timing."""

    __slots__ = ("_pending", "liveness")

    def __init__(self, liveness: float) -> None:
        self.liveness = liveness
        self._pending: dict[int, _Pending[T]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, rid: int) -> bool:
        return rid in self._pending

    def add(self, rid: int, waiter: T, now: float, max_wait: float) -> None:
        """Track request ``rid`` sent at ``now`` that may take up to ``max_wait`` seconds."""
        self._pending[rid] = _Pending(waiter, now, now + max_wait)

    def touch(self, rid: int, now: float) -> None:
        """A heartbeat for ``rid`` arrived: it is alive."""
        pending = self._pending.get(rid)
        if pending is not None:
            pending.last_seen = now

    def pop(self, rid: int) -> T | None:
        """Stop tracking ``rid`` (answered or abandoned); its waiter, if it was tracked."""
        pending = self._pending.pop(rid, None)
        return None if pending is None else pending.waiter

    def pop_all(self) -> list[T]:
        """Stop tracking everything; every waiter."""
        waiters = [p.waiter for p in self._pending.values()]
        self._pending.clear()
        return waiters

    def dead(self, now: float) -> bool:
        """True when some request has heard nothing for the liveness timeout."""
        cutoff = now - self.liveness
        return any(p.last_seen <= cutoff for p in self._pending.values())

    def expired(self, now: float) -> list[T]:
        """Remove and return the waiters whose maximum wait has passed (the owner is slow)."""
        late = [rid for rid, p in self._pending.items() if p.deadline <= now]
        return [self._pending.pop(rid).waiter for rid in late]
