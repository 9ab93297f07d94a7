"""The bridge from any caller (async on any loop, or a plain thread) to the engine's event loop.

The engine lives on one event loop (one loop per process). Callers reach it like this:

- async caller on the engine loop → await directly (no hop);
- async caller on another loop (another thread) → ``run_coroutine_threadsafe`` wrapped as an
  awaitable: the caller's loop is never blocked;
- sync caller on another thread → ``run_coroutine_threadsafe(...).result()``; singleflight on the
  engine loop then dedups across threads as it does across coroutines;
- sync caller *on* the engine loop's thread → :class:`ConfigurationError` (it would deadlock).

When no loop is known yet (a given workspace and no ``loop=``), the first async caller's loop is
taken as the engine loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from tokencache.plugin._errors import ConfigurationError

T = TypeVar("T")
CoroFn = Callable[[], Coroutine[Any, Any, T]]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class EngineBridge:
    """Runs engine coroutines on the engine loop from wherever the caller is."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._lock = threading.Lock()  # guards binding _loop on first async use

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The engine loop, once known."""
        return self._loop

    def _bind(self, running: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = running
            return self._loop

    async def run(self, fn: CoroFn[T]) -> T:
        """Await ``fn()`` on the engine loop without blocking the caller's loop."""
        running = asyncio.get_running_loop()
        loop = self._loop or self._bind(running)
        if loop is running:
            return await fn()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(), loop))

    def run_sync(self, fn: CoroFn[T], timeout: float | None) -> T:
        """Run ``fn()`` on the engine loop from a thread that is not the engine loop's."""
        loop = self._loop
        if loop is None:
            raise ConfigurationError(
                "a sync client needs the engine's loop: pass loop= (the loop the workspace runs "
                "on, or a tokencache.BackgroundLoop's .loop), or omit workspace= for standalone use"
            )
        if _running_loop() is loop:
            raise ConfigurationError(
                "sync httpx.Client used on the engine loop's own thread; use httpx.AsyncClient there"
            )
        future = asyncio.run_coroutine_threadsafe(fn(), loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def spawn(self, fn: CoroFn[None], keep: set[Future[None]]) -> None:
        """Start ``fn()`` on the engine loop and return at once (refresh-ahead), from any thread."""
        loop = self._loop
        if loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(fn(), loop)
        keep.add(future)  # a reference until done, so the task is not collected mid-flight
        future.add_done_callback(keep.discard)
