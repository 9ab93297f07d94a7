"""One write per event-loop iteration for the frames of a busy connection.

With many requests in flight, answers (and requests) are produced in bursts: a single
``data_received`` may carry dozens of GETs that are all cache hits. A ``transport.write`` per frame
is a ``send`` system call per frame, and on loopback each one may wake the process at the other
end (on a shared core, switch to it) before this iteration's work is done. So every frame of an
iteration is queued and the lot goes out in one write when the loop turns (``call_soon``): a lone
request waits microseconds, not a loop round trip. Measured (3 nodes of 32 MiB on one core, 30,000
keys, 28 % of node 0's requests to an owner, side by side over 4 rounds): 6-8 % more requests per
second on node 0 and a quarter less CPU on the owners than writing each iteration's first frame at
once.

Invariant: bytes reach the transport in the order they were given (MACs depend on the order).
The batch is bounded: once `FLUSH_BYTES` are queued they go to the transport at once, so its
write flow control (``pause_writing``) sees them in the same loop iteration — a burst of large
answers is never held here out of the transport's sight.
"""

from __future__ import annotations

import asyncio

# Queued bytes that are written at once instead of at the end of the loop iteration.
FLUSH_BYTES = 64 << 10


class BatchWriter:
    """Writes the frames of a loop iteration together when the loop turns."""

    __slots__ = ("_loop", "_pending", "_pending_bytes", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        """Queue ``data`` behind everything written before."""
        if len(data) >= FLUSH_BYTES:
            # Large (a big value): what is queued goes first, then it, uncopied by a join.
            scheduled = self._scheduled
            self._flush()
            self._scheduled = scheduled  # a scheduled call still comes; it finds nothing
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            scheduled = self._scheduled
            self._flush()
            self._scheduled = scheduled  # a scheduled call still comes; it finds nothing
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def flush(self) -> None:
        """Write whatever is queued now (before a final write and close)."""
        self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)
