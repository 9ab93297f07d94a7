"""The proxy's request handling: the synchronous hit path and the awaited miss/forward path.

Hit path (`CacheHandler.serve_fast`, called by the listener with no task and no await): policy
check → no conditional, ``Range`` or request directive → base key → ``group.peek_with_ttl`` → for
a vary record, the stored variant or the variant's key and a second peek → fresh? (stored ttl -
remaining ttl < stored freshness, no ``no-cache``) → the stored head, a spliced
``Cache-Status``/``Age`` (and ``Connection``) and the stored body in one write → one histogram
observation. Nothing else: no log record, and no span unless the operator let clients ask for one
(TRACE_CLIENT_SAMPLED_HITS) and the client's ``traceparent`` is sampled
(`proxy._tracing.client_sampled`).

Slow path (`CacheHandler.serve`): this node's copy, else ``group.get_fetched(key, context=...)``
— the owner of the key runs `proxy._loader.BackendLoader` once for the cluster, with the
triggering request as load context — then the record decides. A stored response is judged by
`proxy._reuse.reuse`: fresh → answered (a 304, 206 or 416 where the request asks: `proxy._respond`);
stale within ``stale-while-revalidate`` → answered while the owner refreshes it in the background;
stale otherwise (or ``no-cache``) → ``get_fetched(min_ttl=...)`` makes the owner revalidate it (one
conditional request for the cluster) and the result is answered with ``fwd=stale``. A pass record
answers its triggering request with the response it holds; every other request forwards itself and
this node forwards the URL for a while (hit-for-pass). A stale record is served with ``fwd=stale``,
an error record becomes a 502/504 (after one more local stale-if-error look).

Requests the policy excludes are forwarded without touching the cache; a non-error response to an
unsafe method removes the target's (and same-origin ``Location``/``Content-Location``) entries on
every node before the client sees it (RFC 9111 §4.4). ``PURGE`` with the purge token removes a URL
cluster-wide.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable

import httpx
from opentelemetry import propagate, trace

import tokencache

from ._forward import Forwarder, fault_response
from ._http import Connection
from ._http_request import DERIVED_MAX, Request
from ._keys import base_key, join_variant
from ._memo import Memo
from ._metrics import ProxyMetrics, Series
from ._policy import (
    SAFE_METHODS,
    CachePolicy,
    cache_status,
    invalidation_targets,
    variant_lines,
)
from ._request_context import context_fields, with_request_id
from ._respond import answer
from ._reuse import (
    BACKGROUND,
    REVALIDATE,
    STALE_OK,
    request_directives,
    reuse,
    stale_if_error,
)
from ._stored import (
    ERROR,
    NO_CACHE,
    PASS,
    RESPONSE,
    STALE,
    VARY,
    StoredResponse,
    decode_error,
    decode_pass,
    decode_response,
    decode_stale,
    decode_vary,
    encode_error,
    response_layout,
)
from ._tracing import client_sampled

__all__ = ["CacheHandler"]

# Ready-to-write hit responses, kept per key for the second their Cache-Status/Age stay the same.
# Bounded in bytes (each entry holds its response and the stored value it was made from; the
# oldest go first, see `proxy._memo`). A repeat of a remembered request head is answered from them
# without a lookup (`CacheHandler.serve_express`) while the entry they came from is still in the
# cache (its `tokencache.HitTicket`) and `until` has not come.
READY_BYTES = 8 << 20  # the default budget (ProxyApp gives a quarter of the group's size)
_READY_MAX_BYTES = 64 << 10  # larger responses are spliced per hit rather than copied again
_READY_MAX_ENTRIES = 1 << 20
# How much earlier than the exact second a ready record's bytes are renewed (`ready_until`):
# far above the clock's rounding (ulps of ~1e-9 s at a monotonic clock of 1e7 s), far below
# anything a client could time.
READY_EARLY = 1e-6
# Estimated bytes of a ready record beside its key and byte strings (CPython 3.11, x86_64).
_READY_OVERHEAD = 600


class _Ready:
    """A key's last hit: the stored value it came from, that value's layout (what
    `response_layout` returns, for a value without no-cache), the complete response bytes
    written with Cache-Status ttl `ttl_s` and `age`, and for `serve_express`: the entry's
    ticket, the time (on the group's clock) from which the bytes may be no longer right, and
    the metrics series a hit on them counts in. A later second's hit on the same entry
    renews `ttl_s`, `age`, `data` and `until` in place (`CacheHandler._renew`)."""

    __slots__ = (
        "age",
        "base_age",
        "data",
        "fresh",
        "head_end",
        "head_start",
        "series",
        "status",
        "ticket",
        "ttl",
        "ttl_s",
        "until",
        "value",
    )

    def __init__(
        self,
        value: bytes,
        status: int,
        base_age: int,
        ttl: float,
        fresh: float,
        head_start: int,
        head_end: int,
        ttl_s: int,
        age: int,
        data: bytes,
        ticket: tokencache.HitTicket,
        until: float,
        series: Series,
    ) -> None:
        self.value = value
        self.status = status
        self.base_age = base_age
        self.ttl = ttl
        self.fresh = fresh
        self.head_start = head_start
        self.head_end = head_end
        self.ttl_s = ttl_s
        self.age = age
        self.data = data
        self.ticket = ticket
        self.until = until
        self.series = series


def ready_until(
    expires_at: float | None, stored_ttl: float, elapsed: float, fresh: float, ttl_s: int
) -> float:
    """Until when (on the clock of `expires_at`) a hit written `elapsed` seconds into an
    entry's life, with Cache-Status ``ttl=ttl_s``, still writes the same bytes: the entry's
    age in whole seconds and ``int(fresh - elapsed)`` do not change before it, and the entry
    is fresh and unexpired. An entry without expiry never ages (elapsed is always 0).

    `READY_EARLY` seconds early: `_write_hit` works the age out as ``stored_ttl - (expires_at -
    now)``, whose rounding differs from this sum's by a few ulps of the clock's value (a review
    found instants one ulp before the bound at which the lookup wrote Age + 1, or saw the entry
    stale); before the margin both ways of computing agree, after it the bytes are renewed
    with the lookup's own arithmetic (`CacheHandler._renew`)."""
    if expires_at is None:
        return math.inf
    born = expires_at - stored_ttl
    return min(expires_at, born + math.floor(elapsed) + 1, born + fresh - ttl_s) - READY_EARLY


# Request fields that need more than a lookup: conditionals, Range, request directives.
_SLOW_FIELDS = frozenset(
    {b"if-none-match", b"if-modified-since", b"range", b"cache-control", b"pragma"}
)
# Hit-for-pass: after a response that may not be stored, this node forwards the URL's requests
# straight to the backend for `CachePolicy.pass_seconds`, bounded in keys.
_PASS_MAX = 10_000
# Records that are cache entries (what a revalidation may replace a stale copy with).
_ENTRIES = frozenset({RESPONSE, VARY})
# min_ttl slack that makes "at least this much life left" exclude the entry at hand.
_EPSILON = 0.001
# The engine's bound on a load context (a context above it is left out: the fill request then
# carries only the key's headers).
_MAX_CONTEXT_BYTES = 64 << 10


class RequestIds:
    """Fresh random 12-byte request ids, drawn from the system's random source 256 at a time:
    one ``getrandom`` system call per id was a measurable part of a remote hit. Ids must not
    repeat across the cluster (an owner's pass record names the request that triggered it);
    96 random bits make that as unlikely as drawing them one by one. A forked child forgets
    the buffer it inherited (proxy workers are exec'd, but an application may fork after
    serving, say gunicorn's ``--preload``): parent and child must not hand out the same ids."""

    __slots__ = ("__weakref__", "_buf", "_pos")

    _SIZE = 12
    _BATCH = 256

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: RequestIds._forget(ref()))

    @staticmethod
    def _forget(ids: RequestIds | None) -> None:
        if ids is not None:
            ids._buf = b""
            ids._pos = 0

    def __call__(self) -> bytes:
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = secrets.token_bytes(self._SIZE * self._BATCH)
            pos = 0
        self._pos = pos + self._SIZE
        return self._buf[pos : pos + self._SIZE]


class CacheHandler:
    """Answers requests from the ``http`` group or by forwarding (the listener's `Handler`)."""

    def __init__(
        self,
        *,
        policy: CachePolicy,
        forwarder: Forwarder,
        metrics: ProxyMetrics,
        logger: logging.Logger,
        tracer: trace.Tracer | None = None,
        trace_client_sampled_hits: bool = False,
        now: Callable[[], float] = time.perf_counter,
        purge_token: bytes | None = None,
        new_request_id: Callable[[], bytes] | None = None,
        ready_bytes: int = READY_BYTES,
    ) -> None:
        self._policy = policy
        self.policy = policy
        self._forwarder = forwarder
        self.forwarder = forwarder
        self.logger = logger
        self.new_request_id = new_request_id or RequestIds()
        self._purge_token = purge_token or None
        # key -> (monotonic time until which this node forwards it, why): hit-for-pass
        self._passes: dict[str, tuple[float, str]] = {}
        # key -> its background refresh (stale-while-revalidate), one per key at a time
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._metrics = metrics
        self._logger = logger
        self._tracer = tracer
        # Hit spans only when configured: otherwise any client could make every hit cost a span.
        self._hit_tracer = tracer if trace_client_sampled_hits else None
        self._now = now
        self._head_as_get = "GET" in policy.methods
        self._methods = policy.methods
        # Routes or credential caching need the full policy check; otherwise it is inlined.
        self._needs_check = bool(policy.routes) or policy.allow_auth_caching
        self._group: tokencache.Group | None = None
        self._peek: Callable[[str], tuple[bytes, float | None] | None] = _no_peek
        self._entry_now: Callable[[], float] = _no_entries
        # key -> (stored value, ttl second, age, the complete response bytes): a hot key's hits
        # within one second write the same bytes, so they are joined once, not per request.
        self._readies: Memo[str, _Ready] = Memo(_ready_cost, _READY_MAX_ENTRIES, ready_bytes)
        self._ready = self._readies.entries

    @property
    def group(self) -> tokencache.Group | None:
        """The ``http`` group (set once, right after the group is made)."""
        return self._group

    @group.setter
    def group(self, group: tokencache.Group | None) -> None:
        self._group = group
        self._peek = group.peek_with_ttl if group is not None else _no_peek
        self._entry_now = group.clock.now if group is not None else _no_entries

    def _base_key(self, req: Request) -> str:
        method = req.method
        if method == "HEAD" and self._head_as_get:
            method = "GET"  # a HEAD is answered from (and fills) the GET entry
        return base_key(method, req.target)

    # --- the hit path -----------------------------------------------------------------------

    def serve_express(self, conn: Connection, head: Request) -> bool:
        """Answer a repeat of a remembered request head from its key's ready record: a plain
        GET whose last hit came from an entry that is still in the cache (`HitTicket.hit`,
        which counts the hit as a peek would). While the entry's Cache-Status ttl, Age and
        freshness have not changed (`_Ready.until`) the record's bytes are written as they are;
        after that (a later second) they are spliced anew from the entry (`_renew`), as long as
        it is fresh. Everything else (a key without a record, any request that needs more than
        a lookup, a stale entry) takes `serve_fast`."""
        key = head.express
        if key is None:
            key = head.express = self._express_key(head)
        ready = self._ready.get(key)
        if ready is None:
            return False
        started = self._now()
        transport = conn.transport
        if transport is None or conn.listener.draining:
            return False
        now = self._entry_now()
        if now >= ready.until:
            ready = self._renew(key, ready, now, head.target)
            if ready is None:
                return False
        elif not ready.ticket.hit():
            return False
        # Connection.write and Series.observe inlined (the connection is open: its
        # data_received just checked): two Python calls were ~80 ns of a ~900 ns ready hit.
        data = ready.data
        conn.written += len(data)
        transport.write(data)
        series = ready.series
        elapsed = self._now() - started
        series.buckets[bisect_left(series.bounds, elapsed)] += 1
        series.total += elapsed
        return True

    def _renew(self, key: str, ready: _Ready, now: float, target: str) -> _Ready | None:
        """`ready`'s entry at `now` (on the group's clock), a later second than its bytes were
        made for: the record renewed with the bytes a GET of `target` gets now, its hit
        counted; None (nothing counted, nothing changed) when the entry is gone or no longer
        fresh. What `_write_hit` does for a key answered before, without the lookup."""
        ticket = ready.ticket
        expires_at = ticket.expires_at
        if expires_at is None:  # (never here: such a record's `until` is infinite)
            return None
        # As `_write_hit` with the peek's ttl (expires_at - now): time in the cache against
        # the stored freshness.
        elapsed = ready.ttl - (expires_at - now)
        fresh = ready.fresh
        if now >= expires_at or elapsed >= fresh or not ticket.hit():
            return None
        ttl_s, age = int(fresh - elapsed), ready.base_age + int(elapsed)
        value, head_start, head_end = ready.value, ready.head_start, ready.head_end
        view = memoryview(value)
        splice = b"Cache-Status: tokencache; hit; ttl=%d\r\nAge: %d\r\n\r\n" % (ttl_s, age)
        data = b"".join((view[head_start:head_end], splice, view[head_end:]))
        # In place: a new record (and a `put`) was ~0.7 us of a ~3 us renewal.
        grown = len(data) - len(ready.data)
        ready.ttl_s, ready.age, ready.data = ttl_s, age, data
        ready.until = ready_until(expires_at, ready.ttl, elapsed, fresh, ttl_s)
        # The series again: a target's `uri` label can change while its entry lives (an error
        # answer counts under a shared label until the path has one of its own; review).
        ready.series = self._metrics.series("GET", ready.status, "hit", target)
        self._readies.renewed(key, grown)
        return ready

    def _express_key(self, head: Request) -> str:
        """The key whose ready bytes may answer repeats of `head` ("" for none): a GET that
        `serve_fast` would answer by a lookup of that key alone, keep-alive and HTTP/1.1 (an
        answer with no Connection field), with no span to make for it."""
        hmap = head.hmap
        if (
            head.method != "GET"
            or "GET" not in self._methods
            or self._needs_check
            or head.has_body
            or head.reject
            or not head.keep_alive
            or head.version != "1.1"
            or b"authorization" in hmap
            or b"cookie" in hmap
            or not _SLOW_FIELDS.isdisjoint(hmap)
            or (self._hit_tracer is not None and b"traceparent" in hmap)
        ):
            return ""
        return base_key("GET", head.target)

    def serve_fast(self, conn: Connection, req: Request) -> bool:
        """Answer a fresh cache hit synchronously; False sends the request down `serve`."""
        method = req.method
        hmap = req.hmap
        if self._needs_check or method not in self._methods or req.has_body or req.reject:
            bypass = self._policy.request_bypass(
                method,
                req.target,
                has_authorization=b"authorization" in hmap,
                has_cookie=b"cookie" in hmap,
                has_body=req.has_body,
            )
            if bypass is not None or req.reject:
                req.bypass = bypass
                return False
        elif b"authorization" in hmap or b"cookie" in hmap:
            req.bypass = "authorization" if b"authorization" in hmap else "cookie"
            return False
        if not _SLOW_FIELDS.isdisjoint(hmap):
            return False  # conditionals, Range, request directives: the slow path decides
        started = self._now()
        key = base_key("GET" if method == "HEAD" and self._head_as_get else method, req.target)
        found = self._peek(key)
        if found is None:
            return self._fetch_soon(conn, req, key, started)
        value, ttl = found
        if value[:4] != RESPONSE:
            if value[:4] != VARY:
                return False
            vary = decode_vary(value)
            lines = variant_lines(vary.names, [hmap.get(n.encode("latin-1")) for n in vary.names])
            if lines == vary.match:
                value = vary.default
            else:
                key = join_variant(key, vary.generation, lines)
                found = self._peek(key)
                if found is None:
                    return False
                value, ttl = found
                if value[:4] != RESPONSE:
                    return False
        status = self._write_hit(conn, req, key, value, ttl)
        if status is None:
            return False
        self._metrics.observe(method, status, "hit", self._now() - started, req.target)
        if self._hit_tracer is not None and client_sampled(hmap.get(b"traceparent")):
            self._hit_span(req, status)
        return True

    def _fetch_soon(self, conn: Connection, req: Request, key: str, started: float) -> bool:
        """A key this node does not hold: ask its owner without a task (`Group.fetch_soon`) and
        hold the request until the answer; False when that does not apply (the slow path)."""
        group = self._group
        if group is None or self._tracer is not None or key in self._passes:
            return False
        flight = _Flight(self, conn, req)

        def answered(fetched: tokencache.Fetched | BaseException) -> None:
            self._fetched_soon(conn, req, flight, key, fetched, started)

        if not group.fetch_soon(key, flight.context(), answered):
            return False
        req.flight = flight
        conn.hold()
        return True

    def _fetched_soon(
        self,
        conn: Connection,
        req: Request,
        flight: _Flight,
        key: str,
        fetched: tokencache.Fetched | BaseException,
        started: float,
    ) -> None:
        # The owner's answer to `_fetch_soon`: a fresh stored response it had cached is a hit
        # written here; anything else (a load the owner ran for us, a variant record, stale,
        # an error) goes down the slow path with this flight and this answer, so the owner is
        # not asked twice and hit-for-pass knows its trigger.
        try:
            status = None
            if (
                isinstance(fetched, tokencache.Fetched)
                and not fetched.loaded
                and fetched.value[:4] == RESPONSE
            ):
                # (not kept ready: the bytes are the owner's answer, not this node's entry)
                status = self._write_hit(
                    conn, req, key, fetched.value, fetched.ttl, keep_ready=False
                )
            if status is None:
                flight.owner_answer = (key, fetched)
                conn.continue_slow(req)
                return
            self._metrics.observe(req.method, status, "hit", self._now() - started, req.target)
        except Exception as exc:  # noqa: BLE001 - the held request's one boundary
            conn.fail_held(req, exc)
            return
        conn.release(req)

    def _write_hit(
        self,
        conn: Connection,
        req: Request,
        key: str,
        value: bytes,
        ttl: float | None,
        *,
        keep_ready: bool = True,
    ) -> int | None:
        """Answer from the fresh ``TCR2`` record `value` (`ttl` left); its status, or None
        (nothing written) when it may not answer without the slow path (stale, no-cache).
        `keep_ready`: remember the bytes for the key's next hits (`value` is the cached entry)."""
        method = req.method
        # Fresh? (stored ttl - remaining = time in the cache, against the stored freshness)
        connection = conn.connection_header(req)
        ready = self._ready.get(key)
        if ready is not None and ready.value is value:
            # A key answered before: its layout is known and its bytes may be ready.
            status, base_age, stored_ttl, fresh = (
                ready.status,
                ready.base_age,
                ready.ttl,
                ready.fresh,
            )
            elapsed = stored_ttl - ttl if ttl is not None else 0.0
            if elapsed >= fresh:
                return None
            ttl_s, age = int(fresh - elapsed), base_age + int(elapsed)
            if ready.ttl_s == ttl_s and ready.age == age and not connection and method != "HEAD":
                conn.write(ready.data)
                return status
            head_start, head_end = ready.head_start, ready.head_end
        else:
            status, base_age, stored_ttl, fresh, flags, head_start, head_end = response_layout(
                value
            )
            if flags & NO_CACHE:
                return None
            elapsed = stored_ttl - ttl if ttl is not None else 0.0
            if elapsed >= fresh:
                return None
            ttl_s, age = int(fresh - elapsed), base_age + int(elapsed)
        # The hit: stored head, spliced Cache-Status/Age/Connection, stored body.
        view = memoryview(value)
        splice = b"Cache-Status: tokencache; hit; ttl=%d\r\nAge: %d\r\n%s\r\n" % (
            ttl_s,
            age,
            connection,
        )
        # One joined write: measured faster under uvloop than writelines or head/body
        # writes, at 1 KiB (about 2x) and no slower at 100 KiB.
        if method == "HEAD" or head_end == len(value):
            data = b"".join((view[head_start:head_end], splice))
        else:
            data = b"".join((view[head_start:head_end], splice, view[head_end:]))
        conn.write(data)
        if keep_ready and method != "HEAD" and not connection and len(data) <= _READY_MAX_BYTES:
            group = self._group
            ticket = None if group is None else group.ticket(key, value)
            # No ticket: `value` is not a cache entry's own object (a Vary record's default
            # response is a slice made per hit), so no later hit could find it again.
            if ticket is not None:
                until = ready_until(ticket.expires_at, stored_ttl, elapsed, fresh, ttl_s)
                self._readies.put(
                    key,
                    _Ready(
                        value,
                        status,
                        base_age,
                        stored_ttl,
                        fresh,
                        head_start,
                        head_end,
                        ttl_s,
                        age,
                        data,
                        ticket,
                        until,
                        self._metrics.series(method, status, "hit", req.target),
                    ),
                )
        return status

    def _hit_span(self, req: Request, status: int) -> None:
        assert self._hit_tracer is not None
        span = self._hit_tracer.start_span(
            f"{req.method} (cache hit)",
            context=propagate.extract(_carrier(req)),
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": req.method,
                "url.path": req.target.split("?", 1)[0],
                "http.response.status_code": status,
                "tokencache.outcome": "hit",
            },
        )
        span.end()

    # --- the miss / forward path ------------------------------------------------------------

    async def serve(self, conn: Connection, req: Request) -> None:
        """Answer a request `serve_fast` declined."""
        started = self._now()
        # Every request is counted, also one whose task ended in an exception or was cancelled
        # (the client closed while the backend's connection was being closed, e.g. after its
        # `Connection: close`): with the status already sent, else as a 499 error.
        status, outcome = 0, ""
        try:
            if self._tracer is None:
                status, outcome = await self._serve(conn, req)
            else:
                with self._tracer.start_as_current_span(
                    req.method,
                    context=propagate.extract(_carrier(req)),
                    kind=trace.SpanKind.SERVER,
                    attributes={
                        "http.request.method": req.method,
                        "url.path": req.target.split("?", 1)[0],
                    },
                ) as span:
                    status, outcome = await self._serve(conn, req)
                    span.set_attribute("http.response.status_code", status)
                    span.set_attribute("tokencache.outcome", outcome)
        finally:
            if not outcome:
                sent = req.sent_status
                outcome = ("bypass" if req.bypass else "miss") if sent else "error"
                status = sent or 499
            self._metrics.observe(req.method, status, outcome, self._now() - started, req.target)

    async def _forward(
        self, conn: Connection, req: Request, fwd: str, detail: str | None
    ) -> tuple[int, str]:
        unsafe = req.method not in SAFE_METHODS
        status, fault = await self._forwarder.forward(
            conn,
            req,
            cache_status(fwd=fwd, detail=detail),
            before_head=self._invalidator(req) if unsafe else None,
        )
        return status, "error" if fault else "bypass"

    def _invalidator(self, req: Request) -> Callable[[httpx.Response], Awaitable[None]]:
        async def invalidate(response: httpx.Response) -> None:
            if response.status_code < 400:  # RFC 9111 §4.4: non-error responses only
                targets = invalidation_targets(
                    req.target, req.hmap.get(b"host"), response.headers.raw
                )
                await self._remove(targets)

        return invalidate

    async def _remove(self, targets: list[str]) -> None:
        """Remove the stored responses of `targets` on every node of the cluster."""
        group = self.group
        assert group is not None
        for target in targets:
            key = self._base_key_of("GET" if self._head_as_get else "HEAD", target)
            self._passes.pop(key, None)
            try:
                missed = await group.remove(key)
            except tokencache.TokenCacheError:
                self._logger.warning("invalidation failed", extra={"path": target[:200]})
                continue
            if missed:
                # The engine never raises for a peer it could not reach: those keep their copy
                # (an owner serves it to the cluster) until its TTL ends.
                self._logger.warning(
                    "invalidation did not reach every peer",
                    extra={"path": target[:200], "peers_missed": list(missed)},
                )

    def _base_key_of(self, method: str, target: str) -> str:
        return f"{method} {target}"

    async def _purge(self, conn: Connection, req: Request) -> tuple[int, str]:
        token = self._purge_token
        assert token is not None
        given = req.hmap.get(b"authorization", b"")
        ok = given[:7].lower() == b"bearer " and hmac.compare_digest(given[7:].strip(), token)
        if not ok:
            body = b"purge needs the purge token\n"
            head = b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n"
            status = 401
        else:
            await self._remove([req.target])
            body = b"purged\n"
            head = b"HTTP/1.1 200 OK\r\n"
            status = 200
        conn.write(
            b"".join(
                (
                    head,
                    b"Content-Type: text/plain\r\nCache-Control: no-store\r\n",
                    b"Content-Length: %d\r\n" % len(body),
                    conn.connection_header(req),
                    b"\r\n",
                    body,
                )
            )
        )
        return status, "purge"

    async def _serve(self, conn: Connection, req: Request) -> tuple[int, str]:
        if req.method == "PURGE" and self._purge_token is not None:
            return await self._purge(conn, req)
        if req.bypass is not None:
            fwd = "method" if req.bypass == "method" else "bypass"
            return await self._forward(conn, req, fwd, req.bypass)
        directives = request_directives(req.hmap) if self._policy.honor_request_directives else {}
        if "no-store" in directives:
            return await self._forward(conn, req, "bypass", "no-store")
        key = self._base_key(req)
        passing = self._passes.get(key)
        if passing is not None:
            if passing[0] > self._now():
                return await self._forward(conn, req, "bypass", passing[1])
            del self._passes[key]
        flight = req.flight if isinstance(req.flight, _Flight) else _Flight(self, conn, req)
        got = await flight.lookup(key, only_cached="only-if-cached" in directives)
        if got is None:
            return await self._forward(conn, req, "bypass", "key")
        value, ttl, loaded = got
        if value[:4] == VARY:
            vary = decode_vary(value)
            names = vary.names
            lines = variant_lines(names, [req.hmap.get(n.encode("latin-1")) for n in names])
            if lines == vary.match:
                value = vary.default
            else:
                key = join_variant(key, vary.generation, lines)
                got = await flight.lookup(key, only_cached="only-if-cached" in directives)
                if got is None:
                    return await self._forward(conn, req, "bypass", "key")
                value, ttl, loaded = got
        if value[:4] == RESPONSE and not loaded:
            stored = decode_response(value)
            decision = reuse(
                age=stored.age(ttl),
                elapsed=stored.elapsed(ttl),
                fresh=0.0 if stored.flags & NO_CACHE else stored.fresh,
                flags=stored.flags,
                stale_while_revalidate=stored.stale_while_revalidate,
                directives=directives,
            )
            if decision == BACKGROUND:
                self._refresh(key, value, stored, flight.context())
                return self._deliver(conn, req, stored, ttl, cache_status(hit=True, detail="stale"))
            if decision == STALE_OK:
                return self._deliver(conn, req, stored, ttl, cache_status(hit=True, detail="stale"))
            if decision == REVALIDATE:
                if "only-if-cached" in directives:
                    return self._gateway_timeout(conn, req)
                stale_s = stored.staleness(ttl)
                min_ttl = stored.ttl + _EPSILON
                if stale_s >= 0 or stored.flags & NO_CACHE:
                    min_ttl = stored.ttl - (0.0 if stored.flags & NO_CACHE else stored.fresh)
                    min_ttl += _EPSILON
                got = await flight.lookup(key, min_ttl=min_ttl)
                if got is None:
                    return await self._forward(conn, req, "bypass", "key")
                if self.group is not None and got[0][:4] in _ENTRIES and got[0] != value:
                    # this node's copy is superseded (a stale hot copy ends here)
                    self.group.remove_local(key, hashlib.sha256(value).hexdigest())
                return await self._answer(conn, req, flight, key, got[0], got[1], True, "stale")
            return self._deliver(conn, req, stored, ttl, None)
        return await self._answer(conn, req, flight, key, value, ttl, loaded, "miss")

    def _refresh(
        self, key: str, stale: bytes, stored: StoredResponse, context: bytes | None
    ) -> None:
        """Have the owner revalidate `key` in the background (stale-while-revalidate)."""
        group = self.group
        if group is None or key in self._refreshing:
            return
        min_ttl = stored.ttl - stored.fresh + _EPSILON

        async def refresh() -> None:
            try:
                fetched = await group.get_fetched(key, min_ttl=min_ttl, context=context)
                if fetched.value[:4] in _ENTRIES and fetched.value != stale:
                    # a new entry: this node's stale copy ends here
                    group.remove_local(key, hashlib.sha256(stale).hexdigest())
            except Exception:
                self._logger.warning("background refresh failed", exc_info=True)
            finally:
                self._refreshing.pop(key, None)

        self._refreshing[key] = asyncio.get_running_loop().create_task(refresh())

    def _gateway_timeout(self, conn: Connection, req: Request) -> tuple[int, str]:
        body = b"not cached\n"
        conn.write(
            b"".join(
                (
                    b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\n",
                    b"Content-Length: %d\r\n" % len(body),
                    b"Cache-Status: %s\r\n" % cache_status(detail="only-if-cached"),
                    conn.connection_header(req),
                    b"\r\n",
                    body,
                )
            )
        )
        return 504, "error"

    def _deliver(
        self,
        conn: Connection,
        req: Request,
        stored: StoredResponse,
        ttl: float | None,
        status_value: bytes | None,
        *,
        extra_age: float = 0.0,
    ) -> tuple[int, str]:
        """Answer from a stored response: full, 304, 206 or 416 (`proxy._respond`)."""
        age = stored.age(ttl) + int(extra_age)
        if status_value is None:
            remaining = max(0, int(stored.fresh - stored.elapsed(ttl)))
            status_value = b"tokencache; hit; ttl=%d" % remaining
        extra = b"Cache-Status: %s\r\nAge: %d\r\n%s" % (
            status_value,
            age,
            conn.connection_header(req),
        )
        status, data = answer(stored, req.method, req.hmap, extra)
        conn.write(data)
        return status, "hit"

    async def _answer(
        self,
        conn: Connection,
        req: Request,
        flight: _Flight,
        key: str,
        value: bytes,
        ttl: float | None,
        loaded: bool,
        fwd: str,
    ) -> tuple[int, str]:
        kind = value[:4]
        if kind == VARY:
            vary = decode_vary(value)
            value = vary.default  # the variant this flight's trigger loaded
            kind = value[:4]
        if kind == RESPONSE:
            stored = decode_response(value)
            if loaded:
                stored_ok = ttl is None or ttl > 0
                status_value = cache_status(
                    fwd=fwd, stored=stored_ok, detail=None if stored_ok else "not-stored"
                )
                status, _ = self._deliver(conn, req, stored, ttl, status_value)
                return status, "miss"
            return self._deliver(conn, req, stored, ttl, None)
        if kind == PASS:
            record = decode_pass(value)
            base = key.split("\n", 1)[0]  # the slow path looks passes up by the base key
            self._passes[base] = (self._now() + self._policy.pass_seconds, record.reason)
            if len(self._passes) > _PASS_MAX:
                self._passes.clear()
            if record.trigger and record.trigger == flight.request_id and record.response:
                stored = decode_response(record.response)
                status_value = cache_status(fwd="miss", detail=record.reason)
                status, _ = self._deliver(conn, req, stored, None, status_value)
                return status, "miss"
            fwd = "uri-miss" if loaded else "bypass"
            return await self._forward(conn, req, fwd, record.reason)
        if kind == STALE:
            stale = decode_stale(value)
            # The loader's record carries how long the response has been stale (`_stale`),
            # not how long ago the engine entry expired: its Age is freshness + that.
            return self._write_stale(
                conn, req, key, stale.inner, stale.fwd_status, 0.0, staleness=stale.expired_ago
            )
        if kind == ERROR:
            error = decode_error(value)
            local = self.group.peek_stale(key) if self.group is not None else None
            if local is not None and self._may_serve_stale(local[0], local[1]):
                return self._write_stale(conn, req, key, local[0], error.status, local[1])
            status_value = cache_status(fwd=fwd, detail=error.reason)
            conn.write(
                fault_response(
                    error.status, error.reason, status_value, conn.connection_header(req)
                )
            )
            return error.status, "error"
        self._logger.error("unknown record in the http group", extra={"kind": repr(kind)})
        conn.write(fault_response(502, "other", cache_status(fwd="miss"), b"Connection: close\r\n"))
        req.keep_alive = False
        return 502, "error"

    def _may_serve_stale(self, value: bytes, expired_ago: float) -> bool:
        """An expired local entry may answer for a failed backend (stale-if-error)?"""
        if value[:4] == VARY:
            value = decode_vary(value).default
        if value[:4] != RESPONSE:
            return False
        stored = decode_response(value)
        return stale_if_error(
            staleness=stored.ttl - stored.fresh + expired_ago,
            flags=stored.flags,
            allowed=stored.stale_if_error,
            window=self._policy.stale_if_error,
        )

    def _write_stale(
        self,
        conn: Connection,
        req: Request,
        key: str,
        value: bytes,
        fwd_status: int,
        expired_ago: float,
        *,
        staleness: float | None = None,
    ) -> tuple[int, str]:
        if value[:4] == VARY:
            vary = decode_vary(value)
            names = vary.names
            lines = variant_lines(names, [req.hmap.get(n.encode("latin-1")) for n in names])
            value = vary.default if lines == vary.match else b""
        if value[:4] != RESPONSE:
            conn.write(
                fault_response(
                    fwd_status, "other", cache_status(fwd="stale"), conn.connection_header(req)
                )
            )
            return fwd_status, "error"
        stored = decode_response(value)
        # RFC 9211: the stale response went to the origin first (fwd=stale), which failed.
        status_value = cache_status(hit=True, fwd="stale", fwd_status=fwd_status, detail="stale")
        if staleness is not None:  # Age: what it had when stored, its freshness, then stale
            age_from, extra_age = None, stored.fresh + staleness
        else:  # the engine entry expired `expired_ago` seconds ago, after its whole ttl
            age_from, extra_age = 0.0, expired_ago
        status, _ = self._deliver(conn, req, stored, age_from, status_value, extra_age=extra_age)
        return status, "stale"


class _Flight:
    """One request's view of the cache: its id and (made once, when needed) its load context."""

    def __init__(self, handler: CacheHandler, conn: Connection, req: Request) -> None:
        self._handler = handler
        self._conn = conn
        self._req = req
        self.request_id = handler.new_request_id()
        self._context: bytes | None = None
        self._made = False
        # What the owner already answered for (key) on the hit path, a value or an error: the
        # first lookup of that key takes it instead of asking again.
        self.owner_answer: tuple[str, tokencache.Fetched | BaseException] | None = None

    def context(self) -> bytes | None:
        """The load context: the request's end-to-end headers for the owner's loader."""
        if not self._made:
            self._made = True
            handler, conn, req = self._handler, self._conn, self._req
            credentials = handler.policy.allow_auth_caching
            # The header part is the same for every request with these fields from one client
            # address: kept with the head's fields (`Request.derived`), only the request id is new.
            memo = ("context", conn.peer, credentials)
            fields = req.derived.get(memo)
            if not isinstance(fields, bytes):
                headers = handler.forwarder.request_headers(conn, req, shared=True)
                fields = context_fields(headers, credentials=credentials)
                if len(req.derived) < DERIVED_MAX:
                    req.derived[memo] = fields
            data = with_request_id(self.request_id, fields)
            self._context = data if len(data) <= _MAX_CONTEXT_BYTES else None
        return self._context

    async def lookup(
        self, key: str, *, min_ttl: float = 0.0, only_cached: bool = False
    ) -> tuple[bytes, float | None, bool] | None:
        """The value for `key`: this node's copy when live (and `min_ttl` is 0), else the
        cluster's (loaded once by the owner). None: the engine refused the key."""
        group = self._handler.group
        assert group is not None
        answered: BaseException | None = None
        answer = self.owner_answer
        if answer is not None and answer[0] == key and not min_ttl:
            self.owner_answer = None
            if isinstance(answer[1], BaseException):
                answered = answer[1]
            elif not only_cached:
                return answer[1].value, answer[1].ttl, answer[1].loaded
        if not min_ttl:
            found = group.peek_with_ttl(key)
            if found is not None:
                return found[0], found[1], False
            if only_cached:
                return encode_error(504, "only-if-cached"), 0.0, False
        try:
            fetched = await group.get_fetched(
                key, min_ttl=min_ttl, context=self.context(), owner_answered=answered
            )
        except tokencache.InvalidArgument:
            return None
        except Exception:
            # A loader bug or an engine fault: never a crash of the connection, never cached.
            self._handler.logger.exception("cache load failed")
            return encode_error(502, "other"), 0.0, True
        return fetched.value, fetched.ttl, fetched.loaded


def _no_peek(key: str) -> tuple[bytes, float | None] | None:
    return None


def _ready_cost(key: str, ready: _Ready) -> int:
    # The key too: a target of up to max_url_bytes, often far longer than a small response; and
    # the record's objects (the tuple, its ticket and the entry that keeps, numbers, the dict slot).
    return len(key) + len(ready.data) + len(ready.value) + _READY_OVERHEAD


def _no_entries() -> float:
    return math.inf  # no group: no ready bytes are ever current


def _carrier(req: Request) -> dict[str, str]:
    hmap = req.hmap
    carrier = {}
    for name in (b"traceparent", b"tracestate"):
        value = hmap.get(name)
        if value is not None:
            carrier[name.decode()] = value.decode("latin-1")
    return carrier
