"""The public listener's server side: accepting connections, draining, timeouts.

One `Listener` per process owns the listening socket and every `Connection`. A sweeper task
updates a coarse clock (`Listener.now`) and asks each connection to check its deadlines, so the
per-request hot path only stores a float. `in_flight` counts requests whose answer a task is
producing; `wait_idle` waits for it to reach zero (the shell's SIGTERM drain).

Refusals and handler exceptions are counted (`ProxyMetrics.refused`, `.internal_error`); an
exception is logged as one short line without its traceback, at most once per `ERROR_LOG_INTERVAL`
(with the number of those not logged), so no input can flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ._head_memo import HeadMemo
from ._http import Connection
from ._http_request import Handler, ListenerLimits, Request
from ._metrics import ProxyMetrics

__all__ = ["ERROR_LOG_INTERVAL", "Listener"]

ERROR_LOG_INTERVAL = 10.0
# Heads with more fields than this are never remembered (see `Listener.remember_head`).
HEAD_MEMO_FIELDS = 48


class Listener:
    """Accepts connections and runs one `Connection` per socket."""

    def __init__(
        self,
        handler: Handler,
        limits: ListenerLimits | None = None,
        logger: logging.Logger | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.handler = handler
        self.metrics = metrics
        self.limits = limits or ListenerLimits()
        self.logger = logger or logging.getLogger("proxy.http")
        self.connections: set[Connection] = set()
        self.draining = False
        self.now = 0.0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._error_logged_at: float | None = None
        self._errors_unlogged = 0
        # The head memo: exact bytes of a read that held one complete request head without a
        # body, which check_head accepted, mapped to that request. Parsing and checking are
        # pure functions of those bytes, so a read of the same bytes on any connection at a
        # message boundary reuses the result (clients repeat their requests byte for byte).
        # Bounded: the oldest go when full, so hostile variety costs at most `head_memo_entries`
        # entries of at most HEAD_MEMO_BYTES and HEAD_MEMO_FIELDS each, and about
        # `head_memo_bytes` of memory in all. Equal field sections share one parse, counted
        # once (proxy._head_memo).
        self._heads = HeadMemo(self.limits.head_memo_entries, self.limits.head_memo_bytes)
        self.heads = self._heads.entries

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Listen on host:port (port 0 = any free port) and return the bound address.

        ``reuse_port``: share the port with the pod's other workers (``SO_REUSEPORT``).
        """
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        self._server = await loop.create_server(
            lambda: Connection(self),
            host,
            port,
            backlog=1024,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self._sweeper = loop.create_task(self._sweep())
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def in_flight(self) -> int:
        """Requests whose answer is being produced by a task right now."""
        return self._busy

    def _task_started(self) -> None:
        self._busy += 1
        self._idle.clear()

    def _task_done(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    def admit(self) -> bool:
        """Whether a new connection may stay: under ``max_connections``, or once an idle
        keep-alive connection (the longest idle) has been closed to make room."""
        cap = self.limits.max_connections
        if not cap or len(self.connections) < cap:
            return True
        for conn in sorted(self.connections, key=lambda c: c.idle_since):
            if conn.close_if_idle():
                self.connections.discard(conn)
                return True
        self.refused("connections")
        return False

    def remember_head(self, data: bytes, req: Request) -> None:
        """Keep `req` as the parse of `data` in the head memo (`heads`), within its limits."""
        if len(req.headers) <= HEAD_MEMO_FIELDS:
            # (real clients send a dozen fields or so; many fields are parsed every time)
            self._heads.remember(data, req)

    def refused(self, reason: str) -> None:
        """Count a request the listener refused itself (`proxy._http_rules.Verdict.reason`)."""
        if self.metrics is not None:
            self.metrics.refused(reason)

    def handler_failed(self, exc: Exception) -> None:
        """Count a handler exception; log one short line, at most once per interval."""
        if self.metrics is not None:
            self.metrics.internal_error()
        last = self._error_logged_at
        if last is not None and self.now - last < ERROR_LOG_INTERVAL:
            self._errors_unlogged += 1
            return
        self._error_logged_at = self.now
        self.logger.error(
            "request handler failed",
            extra={"error": type(exc).__name__, "not_logged": self._errors_unlogged},
        )
        self._errors_unlogged = 0

    def begin_drain(self) -> None:
        """Answer in-flight requests with ``Connection: close``; close idle connections now."""
        self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle()

    async def wait_idle(self, timeout: float) -> bool:  # noqa: ASYNC109 - the contract's API
        """Wait until no request is in flight; False when `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop listening, close every connection and wait for their tasks to end."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
        tasks = [t for conn in list(self.connections) for t in conn.abort()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        limits = self.limits
        tick = max(0.01, min(1.0, limits.header_timeout / 4, limits.idle_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            now = self.now = loop.time()
            for conn in list(self.connections):
                conn.check_timeouts(now)
