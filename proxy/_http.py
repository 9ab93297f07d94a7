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

The head memo (`Listener.heads`): parsing a head and checking it are pure functions of its bytes,
and clients repeat their requests byte for byte. A read that was exactly one complete request
head without a body, which `check_head` accepted, is remembered with its `Request`; a later read
of the same bytes at a message boundary of an idle connection skips the parser and the checks and
goes straight to the handler: first to ``handler.serve_express``, which may answer it from bytes
kept ready for that head (a fresh hit written before, no copy of the request made), else with a
copy (`Request.again`). Anything else — part of a head, several requests, a body, a refusal —
takes the parser as before.

What a request head must satisfy is `proxy._http_rules.check_head`; a head it refuses is answered
by the listener itself, in order, and the connection closes after it. Only origin-form targets
reach the handler (an absolute-form one arrives rewritten to origin-form, its authority as Host).

Backpressure (flow control, `proxy._http_input.InputFlow`): parsing — and with it answering,
hits included — stops while the transport's write buffer is above its high-water mark, while a
request body has more than ``body_buffer_bytes`` queued for the backend, or while more than
``max_pipeline`` requests wait. A client that pipelines thousands of requests and reads nothing
costs one read, one slice's worth of queued requests and the write buffer, and is aborted after
``write_timeout``. `Connection.drain` waits for the write buffer to drain.

Bodies: a body that fails to parse, exceeds ``max_body_bytes`` or is cut short fails the forward at
once (`proxy._body.BodyStream.fail`); the forwarder answers (400/413) if it can and the connection
closes. Every exception a handler raises ends at one boundary (`Listener.handler_failed`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from ._body import BodyError, BodyStream
from ._http_input import SLICE, InputFlow, Reject
from ._http_request import Request
from ._http_rules import check_head, local_response

if TYPE_CHECKING:
    from ._http_server import Listener

__all__ = ["HEAD_MEMO_BYTES", "Connection"]

# Reads up to this size are looked up in the listener's head memo (hashing costs ~1 ns a byte).
HEAD_MEMO_BYTES = 2048
# One string object per common method and version, not a new one per parse: a remembered head
# keeps them (~100 bytes a head). A fixed table: a client's own tokens are decoded as they come.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
_VERSIONS = {v: v for v in ("1.1", "1.0")}


class _Held:
    """Stands in `Connection._active` for a request the handler answers from a callback."""

    __slots__ = ()

    def cancel(self) -> None:
        """Nothing to cancel: the callback finds the connection closed and only releases it."""


_HELD = _Held()


class Connection(InputFlow, asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, listener: Listener) -> None:
        InputFlow.__init__(self)
        self.listener = listener
        self._express = listener.handler.serve_express
        self.limits = listener.limits
        self._max_header_bytes = self._max_head_bytes = listener.limits.max_header_bytes
        self._max_headers = listener.limits.max_headers
        self.peer: str = ""
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._active: asyncio.Task[None] | _Held | None = None
        self._held_written = 0
        self._parsing: Request | None = None
        self._since = listener.now
        self._progress = listener.now  # last read, or last change of write flow control
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self.written = 0  # bytes written so far: tells whether a request was answered at all
        self._messages = 0  # request heads begun in the slice being parsed
        self._candidate: Request | None = None  # the slice's request, if the memo may keep it

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self._since = self.listener.now
        if not self.listener.admit():
            self._closing = True
            self.transport.close()
            return
        self.listener.connections.add(self)

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
        listener = self.listener
        self._progress = now = listener.now
        if self._held or self._read_blocks:
            # A read that was under way when parsing blocked: keep it for later, in order.
            self._held += data
            self._pause_socket()
            return
        if len(data) <= HEAD_MEMO_BYTES:
            head = listener.heads.get(data)
            if (
                head is not None
                and not self._reading_head
                and self._parsing is None
                and not self._queue
                and self._active is None
                and not self._write_paused
            ):
                # The same bytes as a complete, accepted request head seen before: the same
                # parse and the same verdict, so neither is done again (see Listener.heads).
                self._since = now
                written = self.written
                try:
                    if self._express(self, head):
                        return
                except Exception as exc:  # noqa: BLE001 - the one boundary, as for serve_fast
                    self._failed(head.again(), exc, written)
                    return
                self._dispatch(head.again())
                return
        if len(data) <= SLICE:
            self._feed_slice(data)
        else:
            self._feed(data)

    def eof_received(self) -> bool:
        # The client half-closed: what it sent before still gets its answers (the transport stays
        # open for writing), then the connection closes. A request cut short has none to get.
        self._eof = True
        if not self._held:
            self._end_of_input()
        return True

    def _end_of_input(self) -> None:
        parsing = self._parsing
        if parsing is not None and parsing.body is not None and not parsing.body.complete:
            parsing.body.fail()
        if self._active is None and not self._queue and not self._held:
            self._close()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._progress = self.listener.now
        self.block_reading("write")

    def resume_writing(self) -> None:
        self._write_paused = False
        self._progress = self.listener.now
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_result(None)
        self._write_waiter = None
        self.unblock_reading("write")
        if self._active is None and self._queue:
            self._next()  # answers held back while the buffer was full (may pause it again)

    # --- httptools callbacks ----------------------------------------------------------------

    def _feed_slice(self, data: bytes | memoryview) -> None:
        # Only a slice that starts at a message boundary can be a head by itself: one that ends
        # an earlier request's body (or head) holds bytes the parser did not read as this head.
        boundary = self._parsing is None and not self._reading_head
        self._new_slice()
        InputFlow._feed_slice(self, data)
        req = self._candidate
        if (
            req is not None
            and boundary
            and self._messages == 1
            and self._parsing is None
            and not self._reading_head
            and not self._discard
            and type(data) is bytes
            and len(data) <= HEAD_MEMO_BYTES
        ):
            # This slice was exactly one complete request without a body, accepted as it is.
            self.listener.remember_head(data, req)

    def _new_slice(self) -> None:
        self._messages = 0
        self._candidate = None

    def on_message_begin(self) -> None:
        self._messages += 1
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
            raise Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        headers = self._headers
        if self._head_bytes > self._max_header_bytes or len(headers) >= self._max_headers:
            raise Reject(431)
        # RFC 9110 §5.5: leading and trailing whitespace is not part of a field value (llhttp
        # leaves trailing OWS in); strip() returns the same object when there is none.
        headers.append((name, value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        self._reading_head = False
        if self._discard:
            return  # parsing on after a refusal: nothing more is answered on this connection
        parser = self._parser
        method = parser.get_method()
        version = parser.get_http_version()
        req = Request(
            _METHODS.get(method) or method.decode("ascii", "replace"),
            self._url.decode("latin-1"),
            _VERSIONS.get(version, version),
            self._headers,
            parser.should_keep_alive() and not parser.should_upgrade(),
        )
        verdict = check_head(
            req.method, req.target, req.version, req.headers, req.hmap, self.limits.max_body_bytes
        )
        if verdict.status:
            self.listener.refused(verdict.reason)
            req.reject = verdict.status
            if verdict.status != 200 or req.has_body:
                req.keep_alive = False
                self._stop_reading()
        else:
            if verdict.origin and verdict.origin != req.target:
                req.target = verdict.origin
            if verdict.authority is not None:
                req.set_host(verdict.authority.encode("ascii"))
            if req.has_body:
                req.body = BodyStream(
                    self, self.limits.body_buffer_bytes, self.limits.max_body_bytes
                )
            elif req.keep_alive:
                # A copy as parsed and checked (the memo keeps it only if it was the whole
                # slice): what happens to `req` later (keep_alive cleared by a refusal behind
                # it, a failure, a response without length) is this request's, not the head's.
                self._candidate = req.again()
        self._parsing = req
        queue = self._queue
        if (
            not queue
            and self._active is None
            and req.body is None
            and not req.reject
            and not self._write_paused
        ):
            # The common case, a lone request: offer it to the hit path without queueing it.
            self._dispatch(req)
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
        # Answers wait while the write buffer is full: resume_writing calls this again.
        while self._queue and self._active is None and not self._closing:
            if self._write_paused:
                return
            req = self._queue.popleft()
            if len(self._queue) <= self.limits.max_pipeline // 2:
                self.unblock_reading("pipeline")
            if req.reject:
                self.write(local_response(req.reject, self.connection_header(req)))
                if req.reject != 200 or not req.keep_alive:
                    self._close()
                    return
                self._finished(req)
                continue
            self._dispatch(req)

    def _dispatch(self, req: Request) -> None:
        # The hit path first; then the request is done, held (answered from a callback, see
        # `hold`) or goes to a `serve` task.
        if not self._serve_fast(req):
            self._start(req)
        elif self._active is None:
            self._finished(req)

    def _serve_fast(self, req: Request) -> bool:
        written = self.written
        try:
            return self.listener.handler.serve_fast(self, req)
        except Exception as exc:  # noqa: BLE001 - the one boundary for handler exceptions
            self._failed(req, exc, written)
            return True

    def _start(self, req: Request) -> None:
        self.listener._task_started()
        self._active = asyncio.get_running_loop().create_task(self._run(req))

    async def _run(self, req: Request) -> None:
        written = self.written
        try:
            await self.listener.handler.serve(self, req)
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception as exc:  # noqa: BLE001 - the one boundary for handler exceptions
            self._failed(req, exc, written)
        finally:
            self.listener._task_done()
            self._active = None
        self._finished(req)
        if not self._closing:
            self._next()

    def _failed(self, req: Request, exc: Exception, written: int) -> None:
        # The one boundary for handler exceptions: a 500 when nothing of the answer was sent
        # yet (else the closing connection is the only signal left), a counter, a short line.
        self.listener.handler_failed(exc)
        if self.written == written:
            self.write(local_response(500))
        req.keep_alive = False
        self._close()

    def _finished(self, req: Request) -> None:
        self._since = self.listener.now
        body_open = req.body is not None and not req.body.complete
        ended = self._eof and not self._feeding and not self._held and not self._queue
        if not req.keep_alive or self.listener.draining or body_open or ended:
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
            self.written += len(data)
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark."""
        if self._closing:
            raise ConnectionResetError("client went away")
        if self._write_paused:
            if self._write_waiter is None:
                self._write_waiter = asyncio.get_running_loop().create_future()
            await self._write_waiter

    def hold(self) -> None:
        """The handler's `serve_fast` answers the current request later, from a callback, and
        then calls `release` (answered), `continue_slow` or `fail_held`; until then the
        connection answers nothing else, as while a `serve` task runs."""
        self.listener._task_started()
        self._active = _HELD
        self._held_written = self.written

    def release(self, req: Request) -> None:
        """The held request `req` was answered."""
        self._active = None
        self.listener._task_done()
        self._finished(req)
        if not self._closing:
            self._next()

    def continue_slow(self, req: Request) -> None:
        """The held request `req` goes down the handler's `serve` after all."""
        if self._closing:
            self._active = None
            self.listener._task_done()
            return  # the client went away: nobody to answer
        # The task is counted before the hold ends: in between, in_flight would read 0 and
        # wake a drain (wait_idle), which then closed the connection and cancelled the task.
        self._start(req)
        self.listener._task_done()

    def fail_held(self, req: Request, exc: Exception) -> None:
        """Answering the held request `req` raised `exc`: the one boundary, as for `serve`."""
        self._active = None
        self.listener._task_done()
        self._failed(req, exc, self._held_written)

    def abort(self) -> list[asyncio.Task[None]]:
        """Close at once; return the task still answering a request, if any."""
        active = self._active
        tasks = [active] if isinstance(active, asyncio.Task) else []
        self._close()
        return tasks

    @property
    def idle_since(self) -> float:
        """When this connection last made progress (loop time)."""
        return self._since

    def close_if_idle(self) -> bool:
        """Close when nothing is being answered or read (draining); True when it closed."""
        if self._active is None and not self._queue and not self._reading_head:
            self._close()
            return True
        return False

    def check_timeouts(self, now: float) -> None:
        """Close on a slow request head, a stalled body or reader, or a long-idle connection."""
        if self._write_paused:
            # A client that takes none of our answer: abort, since a close would wait for the
            # write buffer to drain into a socket nobody reads.
            if now - self._progress > self.limits.write_timeout:
                self._close(abort=True)
        elif self._reading_head and not self._read_blocks:
            # (A head cut by a flow-control block is waiting for us, not for the client.)
            if now - self._since > self.limits.header_timeout:
                self._close()
        elif self._parsing is not None and not self._read_blocks:
            # A client that stops sending the body it announced gets idle_timeout of silence
            # (a second while the process drains) before the connection goes.
            stall = min(1.0, self.limits.idle_timeout) if self.listener.draining else None
            if now - self._progress > (stall or self.limits.idle_timeout):
                self._close()
        elif (
            self._active is None
            and not self._queue
            and self._parsing is None
            and now - self._since > self.limits.idle_timeout
        ):
            self._close()

    # --- internals --------------------------------------------------------------------------

    def _touch(self) -> None:
        self._progress = self.listener.now

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
        if self._discard:
            return  # already refused: the connection ends after the answers queued so far
        reading_head = self._reading_head
        self._reading_head = False
        self._stop_reading()
        self.listener.refused("parse")
        parsing = self._parsing
        if not reading_head and parsing is not None and parsing.body is not None:
            # The body of a request being forwarded does not parse: its forward fails at once
            # and answers for it (nothing of a request after it was read).
            parsing.body.fail(BodyError(400, "bad-body"))
            return
        req = Request("", "", "1.1", [], False)
        req.reject = status
        self._queue.append(req)
        if self._active is None:
            self._next()

    def _close(self, *, abort: bool = False) -> None:
        if not self._closing:
            self._closing = True
            self._held = b""
            if self.transport is not None:
                if abort:
                    self.transport.abort()
                else:
                    self.transport.close()
