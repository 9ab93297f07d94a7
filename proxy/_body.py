"""A request body on its way from the client's socket to the backend.

The listener feeds chunks as httptools parses them; the forwarder iterates them (an async iterator
httpx streams upstream). When more than `limit` bytes wait, the connection stops reading from the
socket; it resumes once the consumer has taken half of them. The client's own TCP window then
slows the client down: memory per request stays bounded whatever the body size.

A body ends in one of three ways, and the consumer learns which at once: complete (the iterator
ends), refused (`BodyError` with the status to answer: 400 for a body that does not parse, 413 for
one over `max_bytes`) or cut short (`ConnectionResetError`: the client went away, nobody to answer).
Either failure makes httpx drop the backend connection it was streaming to.

The forwarder waits (`prefetch`) until the body is complete or `limit` bytes of it wait before it
takes a backend connection: a client that trickles a small body (a byte now and then, within the
idle timeout) holds only its own connection, never one of the backend pool's. Without that, 512
such clients held every backend connection and every other miss waited for a 504.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

__all__ = ["BodyError", "BodyStream"]


class BodyError(Exception):
    """The request body was refused: answer `status` (if nothing was sent yet), then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Reader(Protocol):
    def block_reading(self, reason: str) -> None: ...

    def unblock_reading(self, reason: str) -> None: ...


class BodyStream:
    """Chunks of one request body. `complete` turns True when the parser saw the body's end."""

    def __init__(self, reader: _Reader, limit: int, max_bytes: int | None = None) -> None:
        self._reader = reader
        self._limit = limit
        self._max_bytes = max_bytes
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._total = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.complete = False

    @property
    def failed(self) -> bool:
        """True once the body was refused or cut short."""
        return self._error is not None

    def feed(self, data: bytes) -> None:
        """Queue one chunk from the parser (ignored once the body has failed)."""
        if self._error is not None:
            return
        self._total += len(data)
        if self._max_bytes is not None and self._total > self._max_bytes:
            self.fail(BodyError(413, "too-large"))
            return
        self._chunks.append(bytes(data))
        self._size += len(data)
        if self._size > self._limit:
            self._reader.block_reading("body")
        self._wake()

    def finish(self) -> None:
        """The parser reached the end of the body."""
        if self._error is None:
            self.complete = True
        self._wake()

    def fail(self, error: BaseException | None = None) -> None:
        """End the body in failure: the consumer gets `error` (default: ConnectionResetError,
        the client went away). The first failure wins; queued chunks are dropped."""
        if self._error is None and not self.complete:
            self._error = error or ConnectionResetError("client went away during the request body")
            self._chunks.clear()
            self._size = 0
            self._reader.unblock_reading("body")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def prefetch(self) -> None:
        """Wait until the body is complete or more than `limit` bytes of it wait (it streams from
        then on); raise its failure at once."""
        while self._error is None and not self.complete and self._size <= self._limit:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body's chunks in order until its end; raise its failure at once."""
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                if self._size <= self._limit // 2:
                    self._reader.unblock_reading("body")
                yield chunk
                continue
            if self.complete:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
