"""The public listener: HTTP/1.1 on a raw `asyncio.Protocol`, parsed by httptools.

Theory of operation. Each connection feeds its bytes to one `httptools.HttpRequestParser`. When a
request head is complete a `Request` is queued; requests are answered strictly in arrival order
(pipelining), one at a time. The head of the queue is first offered to ``handler.serve_fast``, a
plain function that may answer at once (a cache hit: no task, no await); when it declines, a task
runs ``handler.serve`` and the next request waits until that task is done.

Limits (`ListenerLimits`): the request line plus headers may not exceed ``max_header_bytes``
(431), the header count ``max_headers`` (431), the URL ``max_url_bytes`` (414); any other parse
error is a 400, answered after the requests before it, and the connection closes. A request head
must arrive within ``header_timeout`` of its first byte; an idle keep-alive connection, a client
that stops sending the body it announced and a client that stops reading our answer are closed
after ``idle_timeout`` of silence. The listener's sweeper checks these against a coarse clock, so
the hot path only stores a float.

Backpressure: reading pauses while the transport's write buffer is above its high-water mark, while
a request body has more than ``body_buffer_bytes`` queued for the backend, or while more than
``max_pipeline`` requests wait; `Connection.drain` waits for the write buffer to drain.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from ._body import BodyStream
from ._http_request import Request, rejection_response

if TYPE_CHECKING:
    from ._http_server import Listener

__all__ = ["Connection"]


class _Reject(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class Connection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.limits = listener.limits
        self._max_header_bytes = listener.limits.max_header_bytes
        self._max_headers = listener.limits.max_headers
        self.transport: asyncio.Transport | None = None
        self.peer: str = ""
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._active: asyncio.Task[None] | None = None
        self._parsing: Request | None = None
        self._closing = False
        self._discard = False
        self._reading_head = False
        self._since = listener.now
        self._progress = listener.now  # last read, or last change of write flow control
        self._read_blocks: set[str] = set()
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_raw = 0
        self._began = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self.listener.connections.add(self)
        self._since = self.listener.now

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.listener.connections.discard(self)
        if self._parsing is not None and self._parsing.body is not None:
            self._parsing.body.fail()
        for req in self._queue:
            if req.body is not None:
                req.body.fail()
        self._queue.clear()
        if self._active is not None:
            self._active.cancel()
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_exception(ConnectionResetError("client went away"))

    def data_received(self, data: bytes) -> None:
        if self._closing or self._discard:
            return
        was_head = self._reading_head
        self._began = False
        self._progress = self.listener.now
        try:
            self._parser.feed_data(data)
            if self._reading_head:
                # httptools keeps an unfinished header line to itself: bound it by counting the
                # raw bytes of every read that began and ended inside this request head.
                if was_head and not self._began:
                    self._head_raw += len(data)
                if max(self._head_raw, self._head_bytes) > self.limits.max_header_bytes:
                    self._reject(431)
        except httptools.HttpParserUpgrade:
            # Protocol upgrades are not forwarded: the request is answered as a plain one and
            # the connection closes after it (whatever follows is not HTTP/1.1).
            self._stop_reading()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._reject(cause.status if isinstance(cause, _Reject) else 400)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._progress = self.listener.now
        self.block_reading("write")

    def resume_writing(self) -> None:
        self._write_paused = False
        self._progress = self.listener.now
        self.unblock_reading("write")
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_result(None)
        self._write_waiter = None

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reading_head = True
        self._since = self.listener.now
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._head_raw = 0
        self._began = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if len(self._url) > self.limits.max_url_bytes:
            raise _Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        headers = self._headers
        if self._head_bytes > self._max_header_bytes or len(headers) >= self._max_headers:
            raise _Reject(431)
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._reading_head = False
        parser = self._parser
        req = Request(
            parser.get_method().decode("ascii", "replace"),
            self._url.decode("latin-1"),
            parser.get_http_version(),
            self._headers,
            parser.should_keep_alive() and not parser.should_upgrade(),
        )
        if req.has_body:
            req.body = BodyStream(self, self.limits.body_buffer_bytes)
        self._parsing = req
        queue = self._queue
        if not queue and self._active is None and req.body is None:
            # The common case, a lone request: offer it to the hit path without queueing it.
            if self.listener.handler.serve_fast(self, req):
                self._finished(req)
            else:
                self._start(req)
            return
        queue.append(req)
        if len(queue) > self.limits.max_pipeline:
            self.block_reading("pipeline")
        if self._active is None:
            self._next()

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        if req is not None and req.body is not None:
            req.body.feed(body)

    def on_message_complete(self) -> None:
        req = self._parsing
        self._parsing = None
        self._since = self.listener.now
        if req is not None and req.body is not None:
            req.body.finish()

    # --- request dispatch -------------------------------------------------------------------

    def _next(self) -> None:
        handler = self.listener.handler
        while self._queue and self._active is None and not self._closing:
            req = self._queue.popleft()
            if len(self._queue) <= self.limits.max_pipeline // 2:
                self.unblock_reading("pipeline")
            if req.reject:
                self.write(rejection_response(req.reject))
                self._close()
                return
            if handler.serve_fast(self, req):
                self._finished(req)
                continue
            self._start(req)

    def _start(self, req: Request) -> None:
        self.listener._task_started()
        self._active = asyncio.get_running_loop().create_task(self._run(req))

    async def _run(self, req: Request) -> None:
        try:
            await self.listener.handler.serve(self, req)
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception:
            self.listener.logger.exception("request handler failed")
            self._close()
        finally:
            self.listener._task_done()
            self._active = None
        self._finished(req)
        if not self._closing:
            self._next()

    def _finished(self, req: Request) -> None:
        self._since = self.listener.now
        body_open = req.body is not None and not req.body.complete
        if not req.keep_alive or self.listener.draining or body_open:
            self._close()

    # --- what handlers use ------------------------------------------------------------------

    def connection_header(self, req: Request) -> bytes:
        """The ``Connection`` line this response needs (empty for a 1.1 keep-alive answer)."""
        if not req.keep_alive or self.listener.draining:
            req.keep_alive = False
            return b"Connection: close\r\n"
        if req.version == "1.0":
            return b"Connection: keep-alive\r\n"
        return b""

    def write(self, data: bytes | memoryview) -> None:
        """Write bytes (ignored once the connection is closing)."""
        if self.transport is not None and not self._closing:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark."""
        if self._closing:
            raise ConnectionResetError("client went away")
        if self._write_paused:
            if self._write_waiter is None:
                self._write_waiter = asyncio.get_running_loop().create_future()
            await self._write_waiter

    def abort(self) -> list[asyncio.Task[None]]:
        """Close at once; return the task still answering a request, if any."""
        tasks = [self._active] if self._active is not None else []
        self._close()
        return tasks

    def close_if_idle(self) -> None:
        """Close when nothing is being answered or read (draining)."""
        if self._active is None and not self._queue and not self._reading_head:
            self._close()

    def check_timeouts(self, now: float) -> None:
        """Close on a slow request head, a stalled body or reader, or a long-idle connection."""
        if self._reading_head:
            if now - self._since > self.limits.header_timeout:
                self._close()
        elif self._write_paused or (self._parsing is not None and not self._read_blocks):
            # A client that stops reading our answer, or stops sending the body it announced,
            # gets idle_timeout of silence before the connection goes.
            if now - self._progress > self.limits.idle_timeout:
                self._close()
        elif (
            self._active is None
            and not self._queue
            and self._parsing is None
            and now - self._since > self.limits.idle_timeout
        ):
            self._close()

    # --- internals --------------------------------------------------------------------------

    def block_reading(self, reason: str) -> None:
        if not self._read_blocks and self.transport is not None and not self._closing:
            self.transport.pause_reading()
        self._read_blocks.add(reason)

    def unblock_reading(self, reason: str) -> None:
        if reason in self._read_blocks:
            self._read_blocks.discard(reason)
            if not self._read_blocks and self.transport is not None and not self._closing:
                self._progress = self.listener.now
                self.transport.resume_reading()

    def _stop_reading(self) -> None:
        # Whatever arrives from now on is ignored; queued requests are still answered.
        self._discard = True
        self.block_reading("stopped")
        if self._parsing is not None:
            self._parsing.keep_alive = False
        for req in self._queue:
            req.keep_alive = False

    def _reject(self, status: int) -> None:
        """Answer a malformed request after the ones before it, then close."""
        self._reading_head = False
        self._stop_reading()
        req = Request("", "", "1.1", [], False)
        req.reject = status
        self._queue.append(req)
        if self._active is None:
            self._next()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            if self.transport is not None:
                self.transport.close()
