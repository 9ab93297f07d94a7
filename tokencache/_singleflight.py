"""Singleflight: concurrent calls for one key share one execution.

Invariants:

- The shared work runs in its own task, so a caller that is cancelled or times out stops waiting
  but never cancels the work the other waiters depend on (``asyncio.shield``).
- An exception reaches every waiter of that flight and is not remembered: the next call starts over.
- The flight is forgotten only when its task is done, after the work itself stored its result in
  the cache; a caller arriving in between joins the finished task and gets its result.
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
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(fn())
            self._calls[key] = task
            task.add_done_callback(lambda done, key=key: self._finish(key, done))  # type: ignore[misc]
        return await asyncio.shield(task), shared

    def _finish(self, key: K, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            # Mark the exception retrieved: the waiters got it; nobody else should be warned.
            task.exception()
