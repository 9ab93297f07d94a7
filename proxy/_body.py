"""A request body on its way from the client's socket to the backend.

The listener feeds chunks as httptools parses them; the forwarder iterates them (an async iterator
httpx streams upstream). When more than `limit` bytes wait, the connection stops reading from the
socket; it resumes once the consumer has taken half of them. The client's own TCP window then
slows the client down: memory per request stays bounded whatever the body size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

__all__ = ["BodyStream"]


class _Reader(Protocol):
    def block_reading(self, reason: str) -> None: ...

    def unblock_reading(self, reason: str) -> None: ...


class BodyStream:
    """Chunks of one request body. `complete` turns True when the parser saw the body's end."""

    def __init__(self, reader: _Reader, limit: int) -> None:
        self._reader = reader
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._failed = False
        self.complete = False

    def feed(self, data: bytes) -> None:
        """Queue one chunk from the parser."""
        self._chunks.append(bytes(data))
        self._size += len(data)
        if self._size > self._limit:
            self._reader.block_reading("body")
        self._wake()

    def finish(self) -> None:
        """The parser reached the end of the body."""
        self.complete = True
        self._wake()

    def fail(self) -> None:
        """The client went away before the body ended: the consumer gets ConnectionResetError."""
        self._failed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body's chunks in order until its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                if self._size <= self._limit // 2:
                    self._reader.unblock_reading("body")
                yield chunk
                continue
            if self.complete:
                return
            if self._failed:
                raise ConnectionResetError("client went away during the request body")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
