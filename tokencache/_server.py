"""The peer port: a raw asyncio server speaking the binary peer protocol to a :class:`PeerService`.

House rules: a request that arrives here is answered from this process (its caches or its own
loader) and never forwarded; a loader's error text never crosses the wire (only an error code),
since it may name things the asking process should not learn. Input that breaks the protocol —
bad hello, wrong secret, bad MAC, oversized or malformed frame — is counted (``unauthorized`` or
``bad_requests``), logged at most once per interval, answered with a refusal where the protocol
state allows and closes that connection only; every other connection keeps being served.

A GET that the cache can answer is answered inside ``data_received`` (no task, no span); only a
miss starts a task, and while tasks run the connection sends a heartbeat frame per running request
at the interval the client asked for in its hello, so the client can tell a slow owner from a
frozen one.

Write flow control: while the transport's write buffer is above its high-water mark
(``pause_writing``) the connection stops reading and stops answering: frames already read wait,
in order, until ``resume_writing``. A client that sends requests and never reads their answers
therefore costs about one read's frames and one high-water mark of answers, not an answer per
request; one that takes nothing for ``write_timeout`` seconds is aborted. A connection refused
after its handshake gets the same time to take what is left to send (its close waits for the
buffer to drain), then it is aborted too; one refused in its handshake keeps its handshake slot
and gets what is left of ``handshake_timeout``.

Connection bounds: at most ``max_handshaking`` connections may be between accept and a completed
handshake (each for at most ``handshake_timeout`` seconds; with TLS the TLS handshake has the same
deadline); one beyond that is closed at once and counted as ``busy``. Without the peer secret a
client can do nothing else, so that is all it can hold: one client had held ~10,000 sockets
(half the process's file descriptors) with a trickle of two bytes each.

Load bounds: at most ``max_loads_per_connection`` GETs of one connection and ``max_loads`` of the
whole server run (as tasks) at a time; a GET that misses beyond either is answered ``DECLINED``
at once (the caller then loads it itself, as from any owner that cannot) and counted as ``busy``.
Without them, one connection sending 20,000 GETs of distinct keys made 20,000 tasks (~400 MiB)
and stalled the event loop for seconds.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections import deque
from typing import TYPE_CHECKING, cast

from opentelemetry import trace

from . import _propagation
from . import _protocol as p
from ._channel import Channel, Frame, Limits
from ._context import MAX_CONTEXT_BYTES
from ._errors import Declined, InvalidArgument, NotFound
from ._ratelog import RateLimitedLog
from ._signing import as_key
from ._spans import Spans
from ._stats import ServerStats
from ._writer import BatchWriter

if TYPE_CHECKING:
    from ._peering import PeerService

log = logging.getLogger("tokencache.server")


def _request_limits(max_key_bytes: int, max_value_bytes: int) -> Limits:
    # Room for the group name, lengths, flags, TTLs and the trace context around key and value.
    overhead = 1 << 10
    get = max_key_bytes + MAX_CONTEXT_BYTES + p.MAX_TRACE_BYTES + overhead
    put = max_key_bytes + max_value_bytes + overhead
    small = max_key_bytes + overhead

    def limit(kind: int) -> int | None:
        if kind == p.GET:
            return get
        if kind == p.PUT:
            return put
        if kind in p.REQUESTS:
            return small
        return None

    return limit


class PeerServer:
    """Listens on the peer port and answers peers' requests from ``service``."""

    def __init__(
        self,
        service: PeerService,
        *,
        secret: bytes | str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        stats: ServerStats | None = None,
        spans: Spans | None = None,
        max_key_bytes: int = 32 << 10,
        max_value_bytes: int = 64 << 20,
        handshake_timeout: float = 10.0,
        max_handshaking: int = 1024,
        write_timeout: float = 30.0,
        max_loads: int = 4096,
        max_loads_per_connection: int = 512,
        refusals: RateLimitedLog | None = None,
    ) -> None:
        self.service = service
        self.secret = as_key(secret) if secret else None
        self.ssl = ssl
        self.stats = stats or ServerStats()
        self.spans = spans or Spans()
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self.limits = _request_limits(max_key_bytes, max_value_bytes)
        self.handshake_timeout = handshake_timeout
        self.max_handshaking = max_handshaking
        self.handshaking = 0  # connections accepted whose handshake has not completed
        self.write_timeout = write_timeout
        self.max_loads = max_loads
        self.max_loads_per_connection = max_loads_per_connection
        self.loads = 0  # GET tasks running on all connections
        self.refusals = refusals or RateLimitedLog(log)
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (returns once listening)."""
        if self.secret is None:
            log.warning(
                "no peer secret configured: the peer port accepts unauthenticated requests; "
                "set a shared peer secret in production"
            )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.accepted,
            host,
            port,
            ssl=self.ssl,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl is not None else None,
            reuse_address=True,
        )

    def accepted(self) -> asyncio.Protocol:
        """The protocol for one accepted connection (what the listening socket makes)."""
        return _ServerConnection(self)

    @property
    def port(self) -> int:
        """The port listened on (useful after binding port 0)."""
        assert self._server is not None
        assert self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close every connection (their in-flight requests are dropped)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def refuse(self, remote: str, exc: p.ProtocolError) -> None:
        """Count and (rate-limited) log one refused connection."""
        if exc.code == p.UNAUTHORIZED:
            self.stats.unauthorized += 1
        else:
            self.stats.bad_requests += 1
        self.refusals.refused(remote, f"{p.error_name(exc.code)}: {exc}")


class _ServerConnection(asyncio.Protocol):
    """One peer connection on the server side."""

    def __init__(self, server: PeerServer) -> None:
        self._server = server
        self._service = server.service
        self._channel = Channel(client=False, secret=server.secret, limits=server.limits)
        self._transport: asyncio.Transport | None = None
        # After a refusal: the transport closing while it sends what is buffered (see `_refuse`)
        self._refused: asyncio.Transport | None = None
        self._writer: BatchWriter | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._remote = "?"
        self._heartbeat: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._frames: deque[Frame] = deque()  # read, authenticated, not yet dispatched
        self._write_paused = False
        self._stalled: asyncio.TimerHandle | None = None  # the write timeout while paused
        self._linger: asyncio.TimerHandle | None = None  # the write timeout once refused
        self._handshaking = False  # counted in the server's `handshaking`
        self._handshake_ends = 0.0  # the loop time the handshake must be done by

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._writer = BatchWriter(self._transport, asyncio.get_running_loop())
        peer = transport.get_extra_info("peername")
        self._remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        server = self._server
        if server.handshaking >= server.max_handshaking:
            server.stats.busy += 1
            server.refusals.refused(self._remote, "too many connections in their handshake")
            self._transport.abort()
            self._transport = None
            return
        server.handshaking += 1
        self._handshaking = True
        server._connections.add(self)
        self._deadline = asyncio.get_running_loop().call_later(
            self._server.handshake_timeout, self._handshake_too_slow
        )
        self._handshake_ends = self._deadline.when()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._handshake_over()
        self._stop_timers()
        self._frames.clear()
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        self._transport = self._refused = None

    def abort(self) -> None:
        """Close at once (also a refused connection still sending its buffered bytes)."""
        transport = self._transport or self._refused
        if transport is not None:
            transport.abort()

    def _stop_timers(self) -> None:
        for timer in (self._heartbeat, self._deadline, self._stalled, self._linger):
            if timer is not None:
                timer.cancel()
        self._heartbeat = self._deadline = self._stalled = self._linger = None

    def pause_writing(self) -> None:
        # The client is not taking our answers as fast as we make them: stop reading and
        # answering until it does (frames already read wait in `_frames`).
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()
            if self._stalled is None:
                self._stalled = asyncio.get_running_loop().call_later(
                    self._server.write_timeout, self._write_too_slow
                )

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self._dispatch_frames()
        if not self._write_paused and self._transport is not None:
            self._transport.resume_reading()

    def _write_too_slow(self) -> None:
        self._stalled = None
        if self._write_paused and self._transport is not None:
            self._server.refuse(
                self._remote, p.ProtocolError(p.BAD_REQUEST, "answers not read within the timeout")
            )
            self.abort()

    def _handshake_over(self) -> None:
        if self._handshaking:
            self._handshaking = False
            self._server.handshaking -= 1

    def _handshake_left(self) -> float:
        return max(0.0, self._handshake_ends - asyncio.get_running_loop().time())

    def _handshake_too_slow(self) -> None:
        self._deadline = None
        if self._channel.state != "open":
            self._refuse(p.ProtocolError(p.BAD_REQUEST, "no handshake within the timeout"))

    def _refuse(self, exc: p.ProtocolError) -> None:
        self._server.refuse(self._remote, exc)
        transport = self._transport
        if transport is None:
            return
        if self._writer is not None:
            self._writer.flush()  # answers already sealed go first: the sequence is strict
        transport.write(self._channel.refusal(exc.code, str(exc)))
        transport.close()  # flushes the refusal, then closes
        self._transport = None
        self._frames.clear()
        self._stop_timers()
        # close() waits for the write buffer to drain (with TLS, for the client's close_notify
        # too): a client that stops reading would keep the connection and its unsent answers
        # until TCP gives up. After the handshake it gets `write_timeout`; before, nothing sealed
        # waits, the connection keeps its handshake slot (so `max_handshaking` still bounds such
        # connections) and gets what was left of `handshake_timeout` at most. connection_lost
        # cancels this once the close is done.
        wait = self._server.write_timeout if not self._handshaking else self._handshake_left()
        self._refused = transport
        self._linger = asyncio.get_running_loop().call_later(wait, self.abort)

    def _send(self, kind: int, rid: int, payload: bytes = b"") -> None:
        if self._transport is not None and self._writer is not None:
            self._writer.write(self._channel.frame(kind, rid, payload))

    def data_received(self, data: bytes) -> None:
        channel = self._channel
        try:
            frames = channel.receive(data)
            out = channel.data_to_send()
            if out and self._transport is not None:
                self._transport.write(out)
            if channel.state == "open" and self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
                self._handshake_over()
        except p.ProtocolError as exc:
            self._refuse(exc)
            return
        self._frames.extend(frames)
        self._dispatch_frames()

    def _dispatch_frames(self) -> None:
        """Answer the frames read so far, in order, until the write buffer fills up."""
        frames = self._frames
        try:
            while frames and not self._write_paused and self._transport is not None:
                self._dispatch(*frames.popleft())
        except p.ProtocolError as exc:
            frames.clear()
            self._refuse(exc)

    # -- requests ----------------------------------------------------------------------------

    def _dispatch(self, kind: int, rid: int, payload: bytes) -> None:
        if rid == 0 or rid in self._tasks:
            raise p.ProtocolError(p.BAD_REQUEST, "request id 0 or already in use")
        server = self._server
        service = self._service
        try:
            if kind == p.GET:
                req = p.decode_get(payload, server.max_key_bytes, MAX_CONTEXT_BYTES)
                found = service.serve_cached(req.group, req.key, req.min_ttl)
                if found is not None:
                    self._send(p.VALUE, rid, p.encode_value(found))
                    return
                if (
                    len(self._tasks) >= server.max_loads_per_connection
                    or server.loads >= server.max_loads
                ):
                    server.stats.busy += 1
                    self._send(p.ERROR, rid, p.encode_error(p.DECLINED, "busy"))
                    return
                self._start(rid, req)
            elif kind == p.LOOKUP:
                req_k = p.decode_lookup(payload, server.max_key_bytes)
                found = service.serve_lookup(req_k.group, req_k.key)
                if found is None:
                    self._send(p.MISS, rid)
                else:
                    self._send(p.VALUE, rid, p.encode_value(found._replace(loaded=False)))
            elif kind == p.REMOVE:
                req_k = p.decode_remove(payload, server.max_key_bytes)
                service.serve_remove(req_k.group, req_k.key, req_k.if_digest)
                self._send(p.OK, rid)
            elif kind == p.PUT:
                put = p.decode_put(payload, server.max_key_bytes, server.max_value_bytes)
                service.serve_put(put.group, put.key, put.value, put.ttl, put.kind)
                self._send(p.OK, rid)
            elif kind == p.LEAVE:
                service.serve_leave(p.decode_leave(payload))
                self._send(p.OK, rid)
            else:  # PING; the channel lets only request types through
                service.serve_ping()
                self._send(p.OK, rid)
        except Declined as exc:
            # A leaving or not-ready process refuses pings (a peer must not put it back on its
            # ring), and a hand-off it must not keep.
            self._send(p.ERROR, rid, p.encode_error(p.DECLINED, str(exc)[: p.MAX_MESSAGE_BYTES]))
        except InvalidArgument as exc:
            # The service refused the arguments (unknown group, unusable key): this request
            # fails, the connection and the peer behind it are fine.
            self._send(p.ERROR, rid, p.encode_error(p.BAD_REQUEST, _public(exc)))

    def _start(self, rid: int, req: p.GetRequest) -> None:
        task = asyncio.get_running_loop().create_task(self._serve_get(rid, req))
        self._tasks[rid] = task
        self._server.loads += 1
        task.add_done_callback(self._load_done)
        if self._heartbeat is None and self._channel.heartbeat_ms:
            self._arm_heartbeat()

    def _load_done(self, _task: asyncio.Task[None]) -> None:
        self._server.loads -= 1

    def _arm_heartbeat(self) -> None:
        delay = self._channel.heartbeat_ms / 1000
        self._heartbeat = asyncio.get_running_loop().call_later(delay, self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        if not self._tasks or self._transport is None:
            return
        for rid in self._tasks:
            self._send(p.HEARTBEAT, rid)
        self._arm_heartbeat()

    async def _serve_get(self, rid: int, req: p.GetRequest) -> None:
        server = self._server
        try:
            spans = server.spans
            parent = _propagation.extract(req.trace) if req.trace and spans.on else None
            with spans.span(
                "tokencache.peer.serve",
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes={"tokencache.group": req.group},
            ):
                fetched = await self._service.serve_get(
                    req.group, req.key, min_ttl=req.min_ttl, context=req.context
                )
            answer, payload = p.VALUE, p.encode_value(fetched)
        except NotFound:
            answer, payload = p.ERROR, p.encode_error(p.NOT_FOUND, "not found")
        except Declined:
            answer, payload = p.ERROR, p.encode_error(p.DECLINED, "declined")
        except InvalidArgument as exc:
            answer, payload = p.ERROR, p.encode_error(p.BAD_REQUEST, _public(exc))
        except Exception as exc:  # noqa: BLE001 - any loader failure: the caller loads locally
            log.info("peer load failed in group %s: %s", req.group, type(exc).__name__)
            answer, payload = p.ERROR, p.encode_error(p.LOAD_FAILED, "load failed")
        finally:
            self._tasks.pop(rid, None)
        self._send(answer, rid, payload)


def _public(exc: InvalidArgument) -> str:
    # The engine's InvalidArgument texts name limits and group names, never keys or values.
    return str(exc)[: p.MAX_MESSAGE_BYTES]
