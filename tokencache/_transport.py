"""The peer client: persistent, multiplexed connections speaking the binary peer protocol.

One connection per peer by default (``connections_per_peer`` for more), opened on first use and
kept; any number of requests in flight on it, each with its own request id, answered in any order.
A raw asyncio ``Protocol`` (uvloop's when the loop is uvloop) and the sans-IO :class:`Channel` do
all the work: no HTTP, no per-request framework objects.

Failure model (the whole of ``PeerError.unreachable``): a refused or failed connect, a failed
handshake (wrong secret, not a peer, TLS refused), a connection that closes, and a request that
hears nothing — neither an answer nor a heartbeat — for ``liveness_timeout`` seconds make every
request on that connection fail with ``unreachable=True`` and drop the connection. An owner that
keeps sending heartbeats is alive: its request fails after ``max_load_time`` with
``unreachable=False`` (slow is not dead).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

from . import _protocol as p
from ._channel import Channel, Limits
from ._clock import Clock, MonotonicClock
from ._errors import Declined, NotFound, PeerError
from ._fetched import Fetched, Kind
from ._liveness import InFlight
from ._signing import as_key
from ._writer import BatchWriter

Answer = tuple[int, bytes]  # (frame type, payload)
_Waiter = asyncio.Future[Answer]


def _answer_limits(max_value_bytes: int) -> Limits:
    small = 1 << 10

    def limit(kind: int) -> int | None:
        if kind == p.VALUE:
            return max_value_bytes + 16
        return small if kind in p.ANSWERS else None

    return limit


class _Connection(asyncio.Protocol):
    """One client connection: writes request frames, routes answers to their waiters."""

    def __init__(
        self,
        peer: str,
        channel: Channel,
        liveness: float,
        clock: Clock,
        on_close: Callable[[_Connection], None],
    ) -> None:
        self.peer = peer
        self.channel = channel
        self.inflight: InFlight[_Waiter] = InFlight(liveness)
        # Kept: asyncio.get_running_loop() makes a getpid() system call per call on CPython
        # 3.11, twice per request on the hit path.
        self._loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.open = False
        self._clock = clock
        self._transport: asyncio.Transport | None = None
        self._writer: BatchWriter | None = None
        self._next_rid = 0
        self._timer: asyncio.TimerHandle | None = None
        self._on_close = on_close
        self._tick = max(liveness / 4, 0.01)

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._writer = BatchWriter(self._transport, self._loop)
        self._transport.write(self.channel.start())

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.channel.receive(data)
        except p.ProtocolError as exc:
            self._fail(f"{p.error_name(exc.code)}: {exc}")
            return
        out = self.channel.data_to_send()
        if out and self._transport is not None:
            self._transport.write(out)
        if not self.open and self.channel.state == "open":
            self.open = True
            if not self.ready.done():
                self.ready.set_result(None)
        if not frames:
            return
        now = self._clock.now()
        inflight = self.inflight
        for kind, rid, payload in frames:
            if kind == p.HEARTBEAT:
                inflight.touch(rid, now)
                continue
            if rid == 0 and kind == p.ERROR:  # about the connection; the server closes it
                self._fail("refused: " + p.error_name(p.decode_error(payload)[0]))
                return
            waiter = inflight.pop(rid)  # None: an answer to a request we gave up on
            if waiter is not None and not waiter.done():
                waiter.set_result((kind, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection closed")

    # -- requests ----------------------------------------------------------------------------

    def request(self, kind: int, payload: bytes, max_wait: float) -> _Waiter:
        """Send one request; the future gets its answer (or a ``PeerError``)."""
        self._next_rid = rid = (self._next_rid % 0xFFFFFFFF) + 1  # 0 is the connection's own id
        waiter: _Waiter = self._loop.create_future()
        self.inflight.add(rid, waiter, self._clock.now(), max_wait)
        assert self._writer is not None
        self._writer.write(self.channel.frame(kind, rid, payload))
        if self._timer is None:
            self._timer = self._loop.call_later(self._tick, self._check)
        return waiter

    def _check(self) -> None:
        self._timer = None
        now = self._clock.now()
        if self.inflight.dead(now):
            self._fail("no answer or heartbeat within the liveness timeout")
            return
        for waiter in self.inflight.expired(now):
            if not waiter.done():
                waiter.set_exception(PeerError(self.peer, "no answer within the maximum load time"))
        if len(self.inflight):
            self._timer = self._loop.call_later(self._tick, self._check)

    def _fail(self, reason: str) -> None:
        """Fail everything on this connection as unreachable and drop it (idempotent)."""
        self.open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = PeerError(self.peer, reason, unreachable=True)
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: nobody may be waiting any more
        for waiter in self.inflight.pop_all():
            if not waiter.done():
                waiter.set_exception(error)
        if self._transport is not None:
            self._transport.abort()
        self._on_close(self)

    def close(self) -> None:
        """Drop the connection; requests still waiting fail as unreachable."""
        self._fail("transport closed")


class WireTransport:
    """The default :class:`PeerTransport`: the binary peer protocol over TCP, optionally TLS."""

    def __init__(
        self,
        *,
        secret: bytes | str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        liveness_timeout: float = 3.0,
        max_load_time: float = 30.0,
        connect_timeout: float | None = None,
        max_value_bytes: int = 64 << 20,
        connections_per_peer: int = 1,
        clock: Clock | None = None,
    ) -> None:
        if liveness_timeout <= 0 or max_load_time <= 0:
            raise ValueError("liveness_timeout and max_load_time must be > 0")
        self._secret = as_key(secret) if secret else None
        self._ssl = ssl
        self.liveness_timeout = liveness_timeout
        self.max_load_time = max_load_time
        self._connect_timeout = liveness_timeout if connect_timeout is None else connect_timeout
        self._limits = _answer_limits(max_value_bytes)
        self._per_peer = max(1, connections_per_peer)
        self._clock: Clock = clock or MonotonicClock()
        self._pools: dict[str, list[_Connection]] = {}
        self._connecting: dict[str, asyncio.Future[_Connection]] = {}
        self._turn = 0
        # The owner sends heartbeats three times per liveness timeout: one lost to scheduling
        # jitter still leaves two before the caller gives up.
        self._heartbeat_ms = max(10, int(liveness_timeout * 1000 / 3))

    # -- connections -------------------------------------------------------------------------

    def _pooled(self, peer: str) -> _Connection | None:
        """The next of `peer`'s connections in turn, once its pool is complete (else None)."""
        pool = self._pools.get(peer)
        if not pool or len(pool) < self._per_peer:
            return None
        self._turn += 1
        return pool[self._turn % len(pool)]

    async def _connection(self, peer: str) -> _Connection:
        conn = self._pooled(peer)
        if conn is not None:
            return conn
        pending = self._connecting.get(peer)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(peer))
            self._connecting[peer] = pending
            pending.add_done_callback(lambda done: self._connected(peer, done))
        return await asyncio.shield(pending)

    def _connected(self, peer: str, done: asyncio.Future[_Connection]) -> None:
        self._connecting.pop(peer, None)
        # The connect is shared and shielded: every caller may have stopped waiting (a health
        # ping's own timeout is shorter than the connect's), so its error is read here, or the
        # loop logs "Task exception was never retrieved" for each failed connect to a frozen peer.
        if not done.cancelled():
            done.exception()

    async def _connect(self, peer: str) -> _Connection:
        try:
            parts = urlsplit(peer)
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or not port:
            raise PeerError(peer, "peer URL needs a host and a port")
        channel = Channel(
            client=True, secret=self._secret, limits=self._limits, heartbeat_ms=self._heartbeat_ms
        )
        conn = _Connection(peer, channel, self.liveness_timeout, self._clock, self._forget)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=host if self._ssl is not None else None,
                )
            async with asyncio.timeout(self.liveness_timeout):
                await conn.ready
        except PeerError:
            raise
        except (OSError, TimeoutError, ssl_module.SSLError) as exc:
            conn.close()
            raise PeerError(peer, type(exc).__name__, unreachable=True) from exc
        self._pools.setdefault(peer, []).append(conn)
        return conn

    def _forget(self, conn: _Connection) -> None:
        pool = self._pools.get(conn.peer)
        if pool and conn in pool:
            pool.remove(conn)
            if not pool:
                del self._pools[conn.peer]

    async def _call(self, peer: str, kind: int, payload: bytes, max_wait: float) -> Answer:
        conn = await self._connection(peer)
        if not conn.open:
            raise PeerError(peer, "connection closed", unreachable=True)
        return await conn.request(kind, payload, max_wait)

    # -- operations --------------------------------------------------------------------------

    async def fetch(
        self,
        peer: str,
        group: str,
        key: str,
        *,
        min_ttl: float = 0.0,
        context: bytes | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> Fetched:
        """See :meth:`PeerTransport.fetch`."""
        payload = p.encode_get(group, key, min_ttl, context, trace)
        kind, data = await self._call(peer, p.GET, payload, self.max_load_time)
        if kind == p.VALUE:
            return self._value(peer, data)
        raise self._error(peer, kind, data, key)

    def start_fetch(
        self,
        peer: str,
        group: str,
        key: str,
        *,
        context: bytes | None,
        done: Callable[[Fetched | BaseException], None],
    ) -> bool:
        """A fetch without a task: send the GET now when a connection to ``peer`` is open and
        idle enough (else False, nothing sent); ``done`` later gets the value or the exception
        :meth:`fetch` would raise. The hit path's way to a remote value (see `Group.fetch_soon`).
        """
        conn = self._pooled(peer)  # connecting (or growing the pool) is for the awaiting path
        if conn is None or not conn.open:
            return False
        waiter = conn.request(
            p.GET, p.encode_get(group, key, 0.0, context, None), self.max_load_time
        )

        def answered(future: _Waiter) -> None:
            result: Fetched | BaseException
            if future.cancelled():
                result = PeerError(peer, "cancelled")
            elif (error := future.exception()) is not None:
                result = error
            else:
                kind, data = future.result()
                try:
                    result = (
                        self._value(peer, data)
                        if kind == p.VALUE
                        else self._error(peer, kind, data, key)
                    )
                except PeerError as exc:
                    result = exc
            done(result)

        waiter.add_done_callback(answered)
        return True

    async def lookup(self, peer: str, group: str, key: str) -> Fetched | None:
        """See :meth:`PeerTransport.lookup`."""
        payload = p.encode_lookup(group, key)
        kind, data = await self._call(peer, p.LOOKUP, payload, self.liveness_timeout)
        if kind == p.VALUE:
            return self._value(peer, data)
        if kind == p.MISS:
            return None
        raise self._error(peer, kind, data, key)

    async def remove(
        self, peer: str, group: str, key: str, *, if_digest: str | None = None
    ) -> None:
        """See :meth:`PeerTransport.remove`."""
        await self._expect_ok(peer, p.REMOVE, p.encode_remove(group, key, if_digest), key)

    async def put(
        self,
        peer: str,
        group: str,
        key: str,
        value: bytes,
        ttl: float | None,
        *,
        kind: Kind = Kind.VALUE,
    ) -> None:
        """See :meth:`PeerTransport.put`."""
        await self._expect_ok(peer, p.PUT, p.encode_put(group, key, value, ttl, kind), key)

    async def leave(self, peer: str, member: str) -> None:
        """See :meth:`PeerTransport.leave`."""
        await self._expect_ok(peer, p.LEAVE, p.encode_leave(member), "")

    async def ping(self, peer: str) -> None:
        """See :meth:`PeerTransport.ping`."""
        await self._expect_ok(peer, p.PING, b"", "", self.liveness_timeout)

    async def _expect_ok(
        self, peer: str, kind: int, payload: bytes, key: str, max_wait: float | None = None
    ) -> None:
        answer, data = await self._call(peer, kind, payload, max_wait or self.max_load_time)
        if answer != p.OK:
            error = self._error(peer, answer, data, key)
            if isinstance(error, Declined):  # e.g. a leaving peer refusing a ping: it answered
                error = PeerError(peer, "declined")
            raise error

    async def close(self) -> None:
        """Close every connection; requests still waiting fail as unreachable."""
        for pending in list(self._connecting.values()):
            pending.cancel()
        for pool in list(self._pools.values()):
            for conn in list(pool):
                conn.close()
        self._pools.clear()

    # -- answers -----------------------------------------------------------------------------

    @staticmethod
    def _value(peer: str, data: bytes) -> Fetched:
        try:
            return p.decode_value(data)
        except p.ProtocolError as exc:
            raise PeerError(peer, f"bad answer: {exc}") from None

    @staticmethod
    def _error(peer: str, kind: int, data: bytes, key: str) -> Exception:
        if kind != p.ERROR:
            return PeerError(peer, f"unexpected answer type {kind:#04x}")
        try:
            code, _ = p.decode_error(data)
        except p.ProtocolError:
            return PeerError(peer, "bad error answer")
        if code == p.NOT_FOUND:
            return NotFound(key)
        if code == p.DECLINED:
            return Declined(f"peer {peer} declined")
        return PeerError(peer, p.error_name(code))
