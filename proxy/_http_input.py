"""The byte side of a public connection: slices into the parser, flow-control blocks, held bytes.

Theory of operation. `InputFlow` sits between the socket and the httptools parser. Any number of
named blocks (``write``: the transport's buffer is full; ``body``: a request body waits for the
backend; ``pipeline``: too many requests wait; ``stopped``: nothing more will be read) stop
*parsing*, not only reading: bytes are fed in slices of `SLICE`, and as soon as a block appears
the rest of the current read is kept (`_held`, at most one read, since the socket is paused too)
until the last block is lifted. Without this, one read of thousands of pipelined requests would
be parsed — and its cache hits answered — in one go, whatever the client reads. Parsing resumes
from the event loop (``call_soon``), never inside the frame that lifted the block.

The head of a request is bounded here too: httptools keeps an unfinished header line to itself,
so the raw bytes of every slice that began and ended inside one head are counted.

The subclass (`proxy._http.Connection`) sets `_parser` and `_max_head_bytes` and provides the
parser callbacks and `_reject`, `_stop_reading`, `_end_of_input`, `_touch`.
"""

from __future__ import annotations

import asyncio

import httptools

__all__ = ["SLICE", "InputFlow", "Reject"]

# Bytes fed to the parser at a time: how far parsing runs past a flow-control block.
SLICE = 8192


class Reject(Exception):
    """Raised in a parser callback: refuse the request with `status`."""

    def __init__(self, status: int) -> None:
        self.status = status


class InputFlow:
    """Feeds a connection's bytes to its parser under flow control (see the module docstring)."""

    _parser: httptools.HttpRequestParser
    _max_head_bytes: int

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._closing = False
        self._discard = False  # nothing more is parsed on this connection
        self._eof = False  # the client half-closed: close once what it sent is answered
        self._read_blocks: set[str] = set()
        self._held = b""  # read but not yet parsed: parsing is blocked
        self._feeding = False
        self._socket_paused = False
        self._reading_head = False
        self._head_bytes = 0  # of the head being parsed, as the callbacks saw it
        self._head_raw = 0  # raw bytes of slices inside one head
        self._began = False  # a message began in the current slice

    # --- what the subclass provides -------------------------------------------------------

    def _reject(self, status: int) -> None:
        raise NotImplementedError

    def _stop_reading(self) -> None:
        raise NotImplementedError

    def _end_of_input(self) -> None:
        raise NotImplementedError

    def _touch(self) -> None:
        raise NotImplementedError

    # --- flow control ---------------------------------------------------------------------

    def block_reading(self, reason: str) -> None:
        """Stop parsing and reading for `reason` until `unblock_reading(reason)`."""
        self._read_blocks.add(reason)
        self._pause_socket()

    def unblock_reading(self, reason: str) -> None:
        """Lift the block `reason`; parsing resumes when no block is left."""
        if reason not in self._read_blocks:
            return
        self._read_blocks.discard(reason)
        if self._read_blocks or self._closing:
            return
        self._touch()
        if self._held:
            if not self._feeding:
                # Not from inside the caller's frame (a parser callback or a body consumer).
                asyncio.get_running_loop().call_soon(self._feed_held)
        elif not self._feeding:
            self._resume_socket()

    def _pause_socket(self) -> None:
        if not self._socket_paused and self.transport is not None and not self._closing:
            self._socket_paused = True
            self.transport.pause_reading()

    def _resume_socket(self) -> None:
        if self._socket_paused and self.transport is not None and not self._closing:
            self._socket_paused = False
            self.transport.resume_reading()

    def _feed_held(self) -> None:
        if self._read_blocks or self._closing or self._discard or self._feeding:
            return
        data, self._held = self._held, b""
        self._feed(data)
        if self._eof:
            if not self._held:
                self._end_of_input()
        elif not self._read_blocks and not self._held:
            self._resume_socket()

    def _feed(self, data: bytes) -> None:
        """Parse `data` slice by slice; keep the rest in `_held` as soon as parsing blocks."""
        view = memoryview(data)
        self._feeding = True
        try:
            for start in range(0, len(view), SLICE):
                if self._closing or self._discard:
                    return
                if self._read_blocks:
                    self._held = bytes(view[start:]) + self._held
                    self._pause_socket()
                    return
                self._feed_slice(view[start : start + SLICE])
        finally:
            self._feeding = False

    def _feed_slice(self, data: bytes | memoryview) -> None:
        was_head = self._reading_head
        self._began = False
        try:
            self._parser.feed_data(data)
            if self._reading_head:
                # httptools keeps an unfinished header line to itself: bound it by counting the
                # raw bytes of every slice that began and ended inside this request head.
                if was_head and not self._began:
                    self._head_raw += len(data)
                if max(self._head_raw, self._head_bytes) > self._max_head_bytes:
                    self._reject(431)
        except httptools.HttpParserUpgrade:
            # Protocol upgrades are not forwarded: the request is answered as a plain one and
            # the connection closes after it (whatever follows is not HTTP/1.1).
            self._stop_reading()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._reject(cause.status if isinstance(cause, Reject) else 400)
