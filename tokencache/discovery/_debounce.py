"""Debounce decisions for peer-set changes, driven by an injected clock (no timers here).

A rollout changes many pods within a second or two; every ring change moves key ownership, so a
burst of watch events should become one ``on_peers`` call with the final set. The rule:

- a change opens (or extends) a burst; the burst is delivered ``delay`` seconds after its last
  change, but never later than ``max_delay`` seconds after its first one, so a steady trickle of
  changes cannot hold the ring back forever;
- a burst whose final set equals the last delivered set delivers nothing (a pod that flapped
  not-ready and back within the window never reaches the ring).

The caller owns the timer: it asks :meth:`Debouncer.deadline`, sleeps or schedules until then, and
calls :meth:`Debouncer.poll`.
"""

from __future__ import annotations

from collections.abc import Sequence


class Debouncer:
    """Collapse bursts of peer lists into single deliveries of the final list."""

    __slots__ = ("_delay", "_delivered", "_first", "_last", "_max_delay", "_pending")

    def __init__(self, delay: float, max_delay: float | None = None) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self._delay = delay
        self._max_delay = max(delay, max_delay if max_delay is not None else 5 * delay)
        self._delivered: tuple[str, ...] | None = None  # None: nothing delivered yet
        self._pending: tuple[str, ...] | None = None  # the latest set of the open burst
        self._first = 0.0  # time of the burst's first change
        self._last = 0.0  # time of the burst's latest change

    @property
    def delivered(self) -> tuple[str, ...] | None:
        """The last set handed out, or None before the first delivery."""
        return self._delivered

    def deliver_now(self, peers: Sequence[str]) -> list[str] | None:
        """Deliver ``peers`` at once (the first full list); None when it equals the last set."""
        self._pending = None
        return self._take(tuple(peers))

    def offer(self, peers: Sequence[str], now: float) -> None:
        """Record the current set at time ``now``."""
        candidate = tuple(peers)
        if self._pending is None:
            if candidate == self._delivered:
                return  # nothing changed and no burst open
            self._first = now
        self._pending = candidate
        self._last = now

    def deadline(self) -> float | None:
        """When the open burst is due, or None when there is none."""
        if self._pending is None:
            return None
        return min(self._last + self._delay, self._first + self._max_delay)

    def poll(self, now: float) -> list[str] | None:
        """Return the set to deliver if the burst is due and changed the set, else None."""
        due = self.deadline()
        if due is None or now < due or self._pending is None:
            return None
        candidate, self._pending = self._pending, None
        return self._take(candidate)

    def _take(self, candidate: tuple[str, ...]) -> list[str] | None:
        if candidate == self._delivered:
            return None
        self._delivered = candidate
        return list(candidate)
