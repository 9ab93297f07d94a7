"""The proxy's request handling: the synchronous hit path and the awaited miss/forward path.

Hit path (`CacheHandler.serve_fast`, called by the listener with no task and no await): policy
check → base key → ``group.peek_with_ttl`` → for a vary record, the variant's key and a second
peek → the stored head, a spliced ``Cache-Status``/``Age`` (and ``Connection``) and the stored body
in one write → one histogram observation. Nothing else: no span unless the client's
``traceparent`` asks for a sampled trace, no log record.

Miss path (`CacheHandler.serve`): ``group.get_fetched(key)`` — the owner of the key runs
`proxy._loader.BackendLoader` once for the cluster — then the record that comes back decides:
a response is written (``fwd=miss`` when a loader ran for this request, here or on the owner,
else ``hit``: another request had already put it in the cluster's cache), a vary record
leads to the variant's key, a pass record forwards the request as it is, a stale record is served
marked stale, an error record becomes a 502/504 (after one more local stale-if-error look).
Requests the policy excludes are forwarded without touching the cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from opentelemetry import propagate, trace

import tokencache

from ._forward import Forwarder, fault_response
from ._http import Connection
from ._http_request import Request
from ._metrics import ProxyMetrics
from ._policy import CachePolicy, cache_status, variant_key
from ._stored import (
    ERROR,
    PASS,
    RESPONSE,
    STALE,
    VARY,
    decode_error,
    decode_pass,
    decode_response,
    decode_stale,
    decode_vary,
    encode_error,
    response_layout,
)

__all__ = ["CacheHandler"]

# Ready-to-write hit responses, kept per key for the second their Cache-Status/Age stay the same.
# Bounded in bytes (each entry holds its response and the stored value it was made from) and
# cleared when full: a hot set refills it at once. It only ever saves work; a peek decides a hit.
_READY_BUDGET = 8 << 20
_READY_MAX_BYTES = 64 << 10  # larger responses are spliced per hit rather than copied again


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
        now: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._policy = policy
        self._forwarder = forwarder
        self._metrics = metrics
        self._logger = logger
        self._tracer = tracer
        self._now = now
        self._head_as_get = "GET" in policy.methods
        self._methods = policy.methods
        # Routes or credential caching need the full policy check; otherwise it is inlined.
        self._needs_check = bool(policy.routes) or policy.allow_auth_caching
        self._group: tokencache.Group | None = None
        self._peek: Callable[[str], tuple[bytes, float | None] | None] = _no_peek
        # key -> (stored value, ttl second, age, the complete response bytes): a hot key's hits
        # within one second write the same bytes, so they are joined once, not per request.
        self._ready: dict[str, tuple[bytes, int, int, bytes]] = {}
        self._ready_bytes = 0

    @property
    def group(self) -> tokencache.Group | None:
        """The ``http`` group (set once, right after the group is made)."""
        return self._group

    @group.setter
    def group(self, group: tokencache.Group | None) -> None:
        self._group = group
        self._peek = group.peek_with_ttl if group is not None else _no_peek

    def _base_key(self, req: Request) -> str:
        method = req.method
        if method == "HEAD" and self._head_as_get:
            method = "GET"  # a HEAD is answered from (and fills) the GET entry
        return f"{method} {req.target}"

    # --- the hit path -----------------------------------------------------------------------

    def serve_fast(self, conn: Connection, req: Request) -> bool:
        """Answer a cache hit synchronously; False sends the request down `serve`."""
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
        started = self._now()
        if method == "HEAD" and self._head_as_get:
            key = "GET " + req.target
        else:
            key = method + " " + req.target
        found = self._peek(key)
        if found is None:
            return False
        value, ttl = found
        if value[:4] != RESPONSE:
            if value[:4] != VARY:
                return False
            vary = decode_vary(value)
            values = [hmap.get(name.encode("latin-1")) for name in vary.names]
            if any(v is not None for v in values):
                key = variant_key(key, vary.names, values)
                req.key = key
                found = self._peek(key)
                if found is None:
                    return False
                value, ttl = found
                if value[:4] != RESPONSE:
                    return False
            else:
                value = vary.default
        # The hit: stored head, spliced Cache-Status/Age/Connection, stored body.
        status, base_age, stored_ttl, head_start, head_end = response_layout(value)
        connection = conn.connection_header(req)
        if ttl is None:
            ttl_s, age = -1, base_age
        else:
            ttl_s, age = int(ttl), base_age + max(0, int(stored_ttl - ttl))
        ready = self._ready.get(key)
        if (
            ready is not None
            and ready[0] is value
            and ready[1] == ttl_s
            and ready[2] == age
            and not connection
            and method != "HEAD"
        ):
            conn.write(ready[3])
        else:
            view = memoryview(value)
            if ttl is None:
                splice = b"Cache-Status: tokencache; hit\r\nAge: %d\r\n%s\r\n" % (age, connection)
            else:
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
            if method != "HEAD" and not connection and len(data) <= _READY_MAX_BYTES:
                if self._ready_bytes > _READY_BUDGET:
                    self._ready.clear()
                    self._ready_bytes = 0
                self._ready[key] = (value, ttl_s, age, data)
                self._ready_bytes += len(data) + len(value)
        self._metrics.observe(method, status, "hit", self._now() - started)
        if self._tracer is not None and hmap.get(b"traceparent", b"").endswith(b"-01"):
            self._hit_span(req, status)
        return True

    def _write_response(
        self,
        conn: Connection,
        req: Request,
        value: bytes,
        ttl: float | None,
        status_value: bytes | None,
        *,
        hit: bool = False,
        extra_age: float = 0.0,
    ) -> int:
        stored = decode_response(value)
        age = stored.age(ttl) + int(extra_age)
        if status_value is None:  # the common hit, formatted without the general helper
            if hit and ttl is not None:
                status_value = b"tokencache; hit; ttl=%d" % ttl
            else:
                status_value = b"tokencache; hit"
        splice = b"Cache-Status: %s\r\nAge: %d\r\n%s\r\n" % (
            status_value,
            age,
            conn.connection_header(req),
        )
        if req.method == "HEAD":
            conn.write(b"".join((stored.head, splice)))
        else:
            conn.write(b"".join((stored.head, splice, stored.body)))
        return stored.status

    def _hit_span(self, req: Request, status: int) -> None:
        assert self._tracer is not None
        span = self._tracer.start_span(
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
        self._metrics.observe(req.method, status, outcome, self._now() - started)

    async def _forward(self, conn: Connection, req: Request, fwd: str, detail: str) -> int:
        status, _ = await self._forwarder.forward(conn, req, cache_status(fwd=fwd, detail=detail))
        return status

    async def _serve(self, conn: Connection, req: Request) -> tuple[int, str]:
        if req.bypass is not None:
            fwd = "method" if req.bypass == "method" else "bypass"
            status, fault = await self._forwarder.forward(
                conn, req, cache_status(fwd=fwd, detail=req.bypass)
            )
            return status, "error" if fault else "bypass"
        key = req.key or self._base_key(req)
        got = await self._get(key)
        if got is None:  # the engine refused the key (too long): forward it uncached
            return await self._forward(conn, req, "bypass", "key"), "bypass"
        value, ttl, loaded = got
        if value[:4] == VARY:
            vary = decode_vary(value)
            values = [req.hmap.get(name.encode("latin-1")) for name in vary.names]
            if any(v is not None for v in values):
                key = variant_key(key, vary.names, values)
                got = await self._get(key)
                if got is None:
                    return await self._forward(conn, req, "bypass", "key"), "bypass"
                value, ttl, loaded = got
                if value[:4] == VARY:
                    value = decode_vary(value).default
            else:
                value = vary.default
        return await self._answer(conn, req, key, value, ttl, loaded)

    async def _answer(
        self,
        conn: Connection,
        req: Request,
        key: str,
        value: bytes,
        ttl: float | None,
        loaded: bool,
    ) -> tuple[int, str]:
        kind = value[:4]
        if kind == RESPONSE:
            if loaded:
                stored_ok = ttl is None or ttl > 0
                status_value = cache_status(
                    fwd="miss", stored=stored_ok, detail=None if stored_ok else "ttl"
                )
                return self._write_response(conn, req, value, ttl, status_value), "miss"
            return self._write_response(conn, req, value, ttl, None, hit=True), "hit"
        if kind == PASS:
            reason = decode_pass(value)
            fwd = "uri-miss" if loaded else "bypass"
            status, fault = await self._forwarder.forward(
                conn, req, cache_status(fwd=fwd, detail=reason)
            )
            return status, "error" if fault else ("miss" if loaded else "bypass")
        if kind == STALE:
            stale = decode_stale(value)
            return self._write_stale(conn, req, stale.inner, stale.fwd_status, stale.expired_ago)
        if kind == ERROR:
            error = decode_error(value)
            local = self.group.peek_stale(key) if self.group is not None else None
            if local is not None and local[0][:4] in (RESPONSE, VARY):
                return self._write_stale(conn, req, local[0], error.status, local[1])
            status_value = cache_status(fwd="miss", detail=error.reason)
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

    def _write_stale(
        self, conn: Connection, req: Request, value: bytes, fwd_status: int, expired_ago: float
    ) -> tuple[int, str]:
        if value[:4] == VARY:
            value = decode_vary(value).default
        status_value = cache_status(hit=True, fwd_status=fwd_status, detail="stale")
        status = self._write_response(conn, req, value, 0.0, status_value, extra_age=expired_ago)
        return status, "stale"

    async def _get(self, key: str) -> tuple[bytes, float | None, bool] | None:
        group = self.group
        assert group is not None
        try:
            fetched = await group.get_fetched(key)
        except tokencache.InvalidArgument:
            return None
        except Exception:
            # A loader bug or an engine fault: never a crash of the connection, never cached.
            self._logger.exception("cache load failed")
            return encode_error(502, "other"), 0.0, True
        return fetched.value, fetched.ttl, fetched.loaded


def _no_peek(key: str) -> tuple[bytes, float | None] | None:
    return None


def _carrier(req: Request) -> dict[str, str]:
    hmap = req.hmap
    carrier = {}
    for name in (b"traceparent", b"tracestate"):
        value = hmap.get(name)
        if value is not None:
            carrier[name.decode()] = value.decode("latin-1")
    return carrier
