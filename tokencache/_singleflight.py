"""Singleflight: concurrent calls for one key share one execution.

Invariants:

- The shared work runs in its own task, so a caller that is cancelled or times out stops waiting
  but never cancels the work the other waiters depend on (``asyncio.shield``).
- An exception reaches the waiters of that flight only and is never remembered: a caller that
  arrives after the work failed (even before the done-callback forgot the flight) starts a new one.
- A caller arriving after the work succeeded but before the done-callback joins the finished task
  and gets its result (the work stored it in the cache before finishing: it is as fresh as a hit).
- :meth:`forget` detaches the flights of a key (after a remove): later callers start a new flight,
  the detached one still answers its own waiters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Deduplicates concurrent calls per key."""

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Task[T]] = {}  # key -> the running (or just finished) task

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: K, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``fn()`` once for all concurrent callers with ``key``; return ``(result, shared)``.

        ``shared`` is True for callers that joined a flight another caller started.
        """
        task = self._calls.get(key)
        if task is not None and task.done() and (task.cancelled() or task.exception()):
            task = None  # a failed flight is over: its error belongs to its own waiters
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(fn())
            self._calls[key] = task
            task.add_done_callback(lambda done, key=key: self._finish(key, done))  # type: ignore[misc]
        return await asyncio.shield(task), shared

    def forget(self, match: Callable[[K], bool]) -> int:
        """Detach every flight whose key ``match``es; return how many."""
        gone = [key for key in self._calls if match(key)]
        for key in gone:
            del self._calls[key]
        return len(gone)

    def _finish(self, key: K, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            # Mark the exception retrieved: the waiters got it; nobody else should be warned.
            task.exception()
