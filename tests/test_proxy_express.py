"""Repeats of a remembered request head answered from ready bytes (`CacheHandler.serve_express`).

The express path answers without a lookup, so every way its bytes could stop being the answer is
tried here against a real backend, on a fake clock: the second that changes Age and the
Cache-Status ttl, the end of freshness, removal (locally, by an unsafe method, by eviction) and
replacement of the entry, a listener that is draining, and every request that needs more than a
lookup (credentials, conditionals, Range, request directives, HEAD, HTTP/1.0, Connection: close).
Express hits must count exactly as the hits they replace (metrics, group and cache counters).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

import tokencache
from tests.support.fake_transport import FakeTransport
from tests.support.proxy_app import proxy_app
from tokencache.proxy._app import ProxyApp
from tokencache.proxy._handler import READY_EARLY, _ready_cost, ready_until
from tokencache.proxy._http import Connection
from tokencache.proxy._memo import Memo
from tokencache.testing import FakeClock


class _Backend:
    """Counts requests per path; ``?cc=`` sets Cache-Control, the body names the request's n."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        n = self.counts[request.path] = self.counts.get(request.path, 0) + 1
        headers = {"ETag": f'"{request.path}-{n}"'}
        if "cc" in request.query:
            headers["Cache-Control"] = request.query["cc"]
        return web.Response(body=b"%d of %s" % (n, request.path.encode()), headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


Setup = tuple[ProxyApp, _Backend, FakeClock]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    backend = _Backend()
    await backend.start()
    clock = FakeClock()
    ws = tokencache.Workspace(clock=clock)
    app = proxy_app(backend.url, ws, group_bytes=256 << 10)
    await app.start("127.0.0.1", 0)
    try:
        yield app, backend, clock
    finally:
        await app.close()
        await ws.close()
        await backend.stop()


def _connect(app: ProxyApp) -> tuple[Connection, FakeTransport]:
    conn = Connection(app.listener)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def _get(target: str, extra: bytes = b"", method: bytes = b"GET", version: bytes = b"1.1") -> bytes:
    return b"%s %s HTTP/%s\r\nHost: h\r\nUser-Agent: t\r\n%s\r\n" % (
        method,
        target.encode(),
        version,
        extra,
    )


def _split(buf: bytes, head_only: bool = False) -> tuple[bytes, bytes]:
    """The first complete response in `buf` and the rest (b"" and `buf` when incomplete)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return b"", buf
    head = buf[: end + 4]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    if head_only or head.startswith(b"HTTP/1.1 304"):
        length = 0
    if len(buf) < end + 4 + length:
        return b"", buf
    return buf[: end + 4 + length], buf[end + 4 + length :]


def _field(response: bytes, name: bytes) -> bytes | None:
    head = response.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.lower() == name:
            return value.strip()
    return None


async def _ask(
    conn: Connection, transport: FakeTransport, raw: bytes, head_only: bool = False
) -> bytes:
    """Send `raw` as one read and return the one response it gets (misses take the loop)."""
    transport.out.clear()
    conn.data_received(raw)
    async with asyncio.timeout(5):
        while True:
            response, rest = _split(bytes(transport.out), head_only)
            if response:
                assert rest == b"", "one request, one response"
                return response
            await asyncio.sleep(0.005)


class _Spy:
    """Counts the requests that reach `serve_fast` (those the express path did not answer)."""

    def __init__(self, app: ProxyApp) -> None:
        self.calls = 0
        handler = app.handler
        inner: Callable[[Any, Any], bool] = handler.serve_fast

        def serve_fast(conn: Any, req: Any) -> bool:
            self.calls += 1
            return inner(conn, req)

        handler.serve_fast = serve_fast  # type: ignore[method-assign]


async def _warm(setup: Setup, raw: bytes) -> tuple[Connection, FakeTransport, bytes]:
    """A connection on which `raw` was answered twice (a miss, then, a quarter second later, a
    hit that kept its bytes ready); the second answer."""
    app, _, clock = setup
    conn, transport = _connect(app)
    first = await _ask(conn, transport, raw)
    assert b"fwd=miss" in first
    # (at exactly 0 s in the cache the next instant changes the Cache-Status ttl: no bytes
    # would stay right; a real clock is never exactly there)
    clock.advance(0.25)
    hit = await _ask(conn, transport, raw)
    assert b"tokencache; hit" in hit
    return conn, transport, hit


# --- the pure rule ---------------------------------------------------------------------------


@given(
    stored_ttl=st.floats(1.0, 10_000.0),
    fresh_part=st.floats(0.0, 1.0),
    elapsed_part=st.floats(0.0, 0.999),
    born=st.floats(-1e6, 1e6),
)
def test_ready_until_is_never_late_nor_early(
    stored_ttl: float, fresh_part: float, elapsed_part: float, born: float
) -> None:
    fresh = max(stored_ttl * fresh_part, 0.001)
    elapsed = fresh * elapsed_part
    expires_at = born + stored_ttl
    ttl_s, age = int(fresh - elapsed), int(elapsed)
    until = ready_until(expires_at, stored_ttl, elapsed, fresh, ttl_s)
    assert until > born + elapsed - READY_EARLY - 1e-6  # what was just written is right now
    # Just before `until` the same bytes are still right: same ttl, same age, still fresh, in
    # the lookup's own arithmetic (`_write_hit`: stored ttl minus what the cache has left).
    now = math.nextafter(until, -math.inf)  # the last instant before it
    before = stored_ttl - (expires_at - now)
    if before >= elapsed:
        assert int(fresh - before) == ttl_s and int(before) == age and before < fresh
        assert now < expires_at
    # Just after the margin something changed (else the bytes were given up early).
    after = (until + READY_EARLY + 1e-6) - born
    changed = after >= fresh or int(fresh - after) != ttl_s or int(after) != age
    assert changed or born + after >= expires_at


def test_an_entry_without_expiry_keeps_its_bytes() -> None:
    assert ready_until(None, 300.0, 0.0, 300.0, 300) == math.inf


# --- through the listener --------------------------------------------------------------------


async def test_repeats_skip_the_lookup_and_count_as_hits(setup: Setup) -> None:
    app, backend, _ = setup
    raw = _get("/a")
    conn, transport, hit = await _warm(setup, raw)
    group = app.group
    gets, hits = group.stats.cache_hits, group.main_cache.stats.hits
    spy = _Spy(app)
    repeats = [await _ask(conn, transport, raw) for _ in range(5)]
    assert spy.calls == 0  # answered by serve_express
    assert repeats == [hit] * 5  # the same clock second: the same bytes
    assert backend.counts == {"/a": 1}
    assert app.metrics.count("GET", 200, "hit") == 6
    assert group.stats.cache_hits - gets == 5
    assert group.main_cache.stats.hits - hits == 5
    # A repeat is also the most recently used entry, as after a lookup.
    await _ask(conn, transport, _get("/b"))
    await _ask(conn, transport, raw)
    assert next(iter(group.main_cache.live_entries()))[0] == "GET /a"


async def test_age_and_ttl_move_on_the_second(setup: Setup) -> None:
    _app, _, clock = setup
    raw = _get("/age")
    conn, transport, hit = await _warm(setup, raw)
    assert (_field(hit, b"age"), _field(hit, b"cache-status")) == (
        b"0",
        b"tokencache; hit; ttl=299",
    )
    clock.advance(0.749)
    assert await _ask(conn, transport, raw) == hit
    clock.advance(0.002)  # one second in the cache
    later = await _ask(conn, transport, raw)
    assert (_field(later, b"age"), _field(later, b"cache-status")) == (
        b"1",
        b"tokencache; hit; ttl=298",
    )
    assert await _ask(conn, transport, raw) == later


async def test_a_later_second_is_renewed_without_a_lookup(setup: Setup) -> None:
    app, backend, clock = setup
    raw = _get("/renew")
    conn, transport, hit = await _warm(setup, raw)
    group = app.group
    gets, hits = group.stats.cache_hits, group.main_cache.stats.hits
    spy = _Spy(app)
    later = []
    for _ in range(3):
        clock.advance(1.0)
        later.append(await _ask(conn, transport, raw))
    assert spy.calls == 0  # each second's first repeat renewed the bytes, no lookup
    assert [(_field(r, b"age"), _field(r, b"cache-status")) for r in later] == [
        (b"%d" % s, b"tokencache; hit; ttl=%d" % (299 - s)) for s in (1, 2, 3)
    ]

    # Only those two fields changed: the stored head and body are spliced as before.
    def rest(response: bytes) -> list[bytes]:
        head, body = response.split(b"\r\n\r\n", 1)
        kept = [x for x in head.split(b"\r\n") if not x.lower().startswith((b"age:", b"cache-"))]
        return [*kept, body]

    assert all(rest(r) == rest(hit) for r in later)
    # Counted as the lookups they replace, and the same bytes answer the rest of the second.
    assert group.stats.cache_hits - gets == 3
    assert group.main_cache.stats.hits - hits == 3
    assert app.metrics.count("GET", 200, "hit") == 4
    assert await _ask(conn, transport, raw) == later[-1]
    assert spy.calls == 0 and backend.counts == {"/renew": 1}


async def test_an_entry_removed_within_the_second_is_not_renewed(setup: Setup) -> None:
    app, _backend, clock = setup
    raw = _get("/renew-gone")
    conn, transport, _ = await _warm(setup, raw)
    assert app.group.remove_local("GET /renew-gone")
    clock.advance(1.0)
    again = await _ask(conn, transport, raw)
    assert b"fwd=miss" in again and b"2 of /renew-gone" in again


async def test_freshness_ends_on_time(setup: Setup) -> None:
    _app, backend, clock = setup
    raw = _get("/f?cc=max-age%3D2")
    conn, transport, _ = await _warm(setup, raw)
    clock.advance(1.749)
    assert b"tokencache; hit" in await _ask(conn, transport, raw)
    clock.advance(0.002)
    stale = await _ask(conn, transport, raw)
    assert b"tokencache; hit" not in stale  # revalidated with the backend
    assert backend.counts["/f"] == 2


async def test_a_removed_entry_is_not_answered(setup: Setup) -> None:
    app, _backend, _ = setup
    raw = _get("/gone")
    conn, transport, _ = await _warm(setup, raw)
    assert app.group.remove_local("GET /gone")
    again = await _ask(conn, transport, raw)
    assert b"fwd=miss" in again and b"2 of /gone" in again


async def test_an_unsafe_method_invalidates_the_ready_bytes(setup: Setup) -> None:
    app, _backend, _ = setup
    raw = _get("/post")
    conn, transport, _ = await _warm(setup, raw)
    other, other_transport = _connect(app)
    posted = await _ask(other, other_transport, _get("/post", b"Content-Length: 0\r\n", b"POST"))
    assert posted.startswith(b"HTTP/1.1 200")
    again = await _ask(conn, transport, raw)
    assert b"fwd=miss" in again and b"3 of /post" in again  # GET, POST, GET again


async def test_an_evicted_entry_is_not_answered(setup: Setup) -> None:
    app, _backend, _ = setup
    raw = _get("/evicted")
    conn, transport, _ = await _warm(setup, raw)
    other, other_transport = _connect(app)
    i = 0
    async with asyncio.timeout(30):
        while "GET /evicted" in app.group.main_cache:  # a 256 KiB group: fill until it goes
            await _ask(other, other_transport, _get(f"/filler/{i}?{'x' * 2000}"))
            i += 1
    again = await _ask(conn, transport, raw)
    assert b"fwd=miss" in again and b"2 of /evicted" in again


async def test_a_replaced_entry_is_not_answered(setup: Setup) -> None:
    _app, _backend, clock = setup
    raw = _get("/replaced?cc=max-age%3D1")
    conn, transport, _ = await _warm(setup, raw)
    clock.advance(1.0)
    refreshed = await _ask(conn, transport, raw)  # stale: a new response replaces the entry
    assert b"tokencache; hit" not in refreshed
    after = await _ask(conn, transport, raw)
    assert b"tokencache; hit" in after and _field(after, b"etag") == b'"/replaced-2"'


async def test_draining_answers_with_connection_close(setup: Setup) -> None:
    app, _, _ = setup
    raw = _get("/drain")
    conn, transport, _ = await _warm(setup, raw)
    app.listener.draining = True  # (begin_drain would close this idle connection at once)
    try:
        last = await _ask(conn, transport, raw)
    finally:
        app.listener.draining = False
    assert _field(last, b"connection") == b"close"
    assert transport.closed


@pytest.mark.parametrize(
    ("extra", "method", "version", "check"),
    [
        (b'If-None-Match: "/c-1"\r\n', b"GET", b"1.1", lambda r: r.startswith(b"HTTP/1.1 304")),
        (b"Range: bytes=0-1\r\n", b"GET", b"1.1", lambda r: r.startswith(b"HTTP/1.1 206")),
        (b"Cache-Control: max-age=0\r\n", b"GET", b"1.1", lambda r: b"200" in r.split(b"\r\n")[0]),
        (
            b"Connection: keep-alive\r\n",
            b"GET",
            b"1.0",
            lambda r: _field(r, b"connection") == b"keep-alive",
        ),
        (b"Connection: close\r\n", b"GET", b"1.1", lambda r: _field(r, b"connection") == b"close"),
        (b"", b"HEAD", b"1.1", lambda r: r.endswith(b"\r\n\r\n")),
    ],
    ids=["if-none-match", "range", "request-directive", "http-1.0", "connection-close", "head"],
)
async def test_requests_that_need_more_than_a_lookup_are_answered_as_such(
    setup: Setup, extra: bytes, method: bytes, version: bytes, check: Callable[[bytes], bool]
) -> None:
    app, backend, _ = setup
    await _warm(setup, _get("/c"))
    raw = _get("/c", extra, method, version)
    for _ in range(3):  # the first reads the head, later ones are repeats of a remembered one
        conn, transport = _connect(app)
        response = await _ask(conn, transport, raw, head_only=method == b"HEAD")
        assert check(response), response
    assert backend.counts["/c"] == 1


async def test_credentials_are_never_answered_from_ready_bytes(setup: Setup) -> None:
    app, backend, _ = setup
    await _warm(setup, _get("/private"))
    raw = _get("/private", b"Authorization: Bearer x\r\n")
    conn, transport = _connect(app)
    for n in range(3):
        response = await _ask(conn, transport, raw)
        assert b"tokencache; hit" not in response
        assert backend.counts["/private"] == 2 + n  # forwarded each time


# --- renewals against the lookup they replace (from a break-it review) ----------------------

_DIFF_TARGETS = [
    "/d1?cc=max-age%3D3",
    "/d2?cc=max-age%3D4,%20stale-while-revalidate%3D3",
    "/d3?cc=max-age%3D2,%20must-revalidate",
    "/d4?cc=",
]
_DIFF_STEPS = [0.0, 0.001, 0.25, 0.5, 0.749, 0.999, 1.0, 1.0, 1.5, 2.0, 3.0]


@pytest.mark.parametrize("seed", range(12))
async def test_every_express_answer_is_what_a_lookup_writes_at_that_instant(
    setup: Setup, seed: int
) -> None:
    # A random walk of the fake clock (whole seconds, fractions, the end of freshness) with
    # removals, HEADs, HTTP/1.0 and revalidations mixed in. At each step the reference is a
    # lookup at the same instant (a head never seen before, through serve_fast, with an empty
    # ready memo); the express answer must be byte-identical and count one hit.
    app, _backend, clock = setup
    rng = random.Random(seed)
    handler = app.handler
    target = f"{_DIFF_TARGETS[seed % len(_DIFF_TARGETS)]}&s={seed}"
    key = "GET " + target
    raw = _get(target)
    conn, transport = _connect(app)
    ref, ref_transport = _connect(app)
    spy = _Spy(app)
    await _ask(conn, transport, raw)
    compared = 0
    for i in range(80):
        clock.advance(rng.choice(_DIFF_STEPS) + (rng.random() * 0.01 if rng.random() < 0.2 else 0))
        if rng.random() < 0.03:
            app.group.remove_local(key)
        x = rng.random()
        if x < 0.05:
            await _ask(ref, ref_transport, _get(target, method=b"HEAD"), head_only=True)
        elif x < 0.10:
            other, other_transport = _connect(app)
            await _ask(
                other, other_transport, _get(target, b"Connection: keep-alive\r\n", b"GET", b"1.0")
            )
        elif x < 0.13:
            other, other_transport = _connect(app)
            await _ask(other, other_transport, _get(target, b"Cache-Control: no-cache\r\n"))
        saved = handler._readies
        handler._readies = Memo(_ready_cost, 1024, 1 << 20)
        handler._ready = handler._readies.entries
        try:
            expected = await _ask(ref, ref_transport, _get(target, b"X-N: %d\r\n" % i))
        finally:
            handler._readies, handler._ready = saved, saved.entries
        hits, before = app.group.stats.cache_hits, spy.calls
        answer = await _ask(conn, transport, raw)
        if spy.calls == before:  # answered by serve_express
            assert answer == expected, i
            assert app.group.stats.cache_hits - hits == 1
            compared += 1
        readies = handler._readies
        assert readies.bytes == sum(_ready_cost(k, v) for k, v in readies.entries.items())
    assert compared > 5


async def test_a_renewed_hot_copy_counts_as_a_lookup_and_yields_to_the_main_cache(
    setup: Setup,
) -> None:
    app, _backend, clock = setup
    group = app.group
    key, raw = "GET /hot", _get("/hot")
    conn, transport = _connect(app)
    await _ask(conn, transport, raw)  # a miss: stored in the main cache...
    value = group.main_cache.value_of(key)
    found = group.main_cache.get(key)
    assert value is not None and found is not None
    group.main_cache.remove(key)
    group.hot_cache.add(key, value, found[1])  # ...and now only a hot copy
    clock.advance(0.25)

    def counters() -> list[int]:
        return [
            group.stats.gets,
            group.stats.cache_hits,
            group.main_cache.stats.gets,
            group.main_cache.stats.hits,
            group.hot_cache.stats.gets,
            group.hot_cache.stats.hits,
            app.metrics.count("GET", 200, "hit"),
        ]

    ref, ref_transport = _connect(app)
    start = counters()
    await _ask(ref, ref_transport, _get("/hot", b"X-N: 0\r\n"))  # a lookup's counts
    looked_up = [b - a for a, b in zip(start, counters(), strict=True)]
    await _ask(conn, transport, raw)  # a lookup that keeps the record (a hot copy's ticket)
    spy = _Spy(app)
    clock.advance(1.0)
    start = counters()
    renewed = await _ask(conn, transport, raw)
    assert spy.calls == 0 and _field(renewed, b"age") == b"1"
    assert [b - a for a, b in zip(start, counters(), strict=True)] == looked_up
    # The main cache gets the key: a lookup reads it first, so the hot copy answers no more.
    group.main_cache.add(key, value.replace(b"1 of /hot", b"X of /hot"), found[1])
    clock.advance(1.0)
    after = await _ask(conn, transport, raw)
    assert spy.calls == 1 and b"X of /hot" in after


async def test_a_renewed_hit_counts_under_the_targets_current_label() -> None:
    # An error answer counts under a shared uri label until its path has a label of its own;
    # a renewal must count where a lookup at that instant would (not where the record began).
    async def handle(request: web.Request) -> web.Response:
        status = 404 if "a" in request.query else 200
        return web.Response(status=status, body=b"b", headers={"Cache-Control": "max-age=60"})

    backend = web.Application()
    backend.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(backend, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    clock = FakeClock()
    ws = tokencache.Workspace(clock=clock)
    app = proxy_app(f"http://127.0.0.1:{runner.addresses[0][1]}", ws)
    await app.start("127.0.0.1", 0)
    try:
        raw = _get("/nf?a=1")
        conn, transport = _connect(app)
        await _ask(conn, transport, raw)
        clock.advance(0.25)
        await _ask(conn, transport, raw)  # a hit, kept ready with its series
        await _ask(conn, transport, _get("/nf"))  # a 200: the path gets its own label
        clock.advance(1.0)
        await _ask(conn, transport, raw)  # renewed
        other, other_transport = _connect(app)
        await _ask(other, other_transport, _get("/nf?a=1", b"X-N: 1\r\n"))  # a lookup
        counts = {k: sum(s.buckets) for k, s in app.metrics._series.items()}
        assert counts.get(("GET", 404, "hit", "/nf")) == 2, counts
    finally:
        await app.close()
        await ws.close()
        await runner.cleanup()
