"""One write per event-loop iteration for the frames of a busy connection.

With many requests in flight, answers (and requests) are produced in bursts: a single
``data_received`` may carry dozens of GETs that are all cache hits. A ``transport.write`` per frame
is a ``send`` system call per frame; coalescing a burst into one write costs nothing in latency
(the first frame of an iteration is written at once, only the rest wait for the iteration's end)
and saves most of the system calls under load.

Invariant: bytes reach the transport in the order they were given (MACs depend on the order).
"""

from __future__ import annotations

import asyncio


class BatchWriter:
    """Writes the first frame of a loop iteration at once and the rest together at its end."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        """Queue ``data`` behind everything written before."""
        if self._scheduled:
            self._pending.append(data)
            return
        self._transport.write(data)
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
        if not self._transport.is_closing():
            self._transport.write(data)
