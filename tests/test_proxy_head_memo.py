"""The public listener's head memo (`Listener.heads`), from the attacker's side.

The memo lets a read that repeats an accepted request head byte for byte skip the parser and the
checks. It must never change what any byte sequence gets: a hypothesis differential feeds the same
reads (well-formed, malformed, split, pipelined, with bodies, random bytes) to a connection whose
listener has learnt every one of them and to one whose listener has the memo off, and compares
every byte answered and every request the handler saw. Refusals are never remembered, and the
memo stays bounded under endless variety.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fake_transport import FakeTransport
from tokencache.proxy._forward import upstream_headers
from tokencache.proxy._http import Connection
from tokencache.proxy._http_request import DERIVED_MAX, ListenerLimits, Request
from tokencache.proxy._http_server import Listener
from tokencache.proxy._metrics import ProxyMetrics
from tokencache.proxy._request_context import context_fields


class _Echo:
    """A handler that answers with everything it was given: a hit for /hit*, else a task."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def _answer(self, conn: Connection, req: Request, path: str) -> None:
        seen = (
            path,
            req.method,
            req.target,
            req.version,
            list(req.headers),
            sorted(req.hmap.items()),
            req.keep_alive,
            req.has_body,
        )
        self.seen.append(seen)
        body = repr(seen).encode()
        conn.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), conn.connection_header(req), body)
        )

    def serve_fast(self, conn: Connection, req: Request) -> bool:
        if req.has_body or not req.target.startswith("/hit"):
            return False
        self._answer(conn, req, "fast")
        return True

    def serve_express(self, conn: Connection, head: Request) -> bool:
        # Repeats of remembered /hit heads are answered here, as serve_fast would answer them:
        # whatever reaches this path must be the same request, at the same point of the stream.
        if not head.target.startswith("/hit") or conn.listener.draining or not head.keep_alive:
            return False
        self._answer(conn, head, "fast")
        return True

    async def serve(self, conn: Connection, req: Request) -> None:
        body = b""
        if req.body is not None:
            try:
                body = b"".join([chunk async for chunk in req.body.chunks()])
            except Exception as exc:  # a failed body is part of the answer
                body = repr(exc).encode()
        await asyncio.sleep(0)
        self._answer(conn, req, "slow " + body.decode("latin-1"))


def _listener(entries: int) -> tuple[Listener, _Echo, ProxyMetrics]:
    echo, metrics = _Echo(), ProxyMetrics()
    listener = Listener(echo, ListenerLimits(head_memo_entries=entries), metrics=metrics)
    listener.now = 1.0
    return listener, echo, metrics


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def _converse(
    listener: Listener, reads: list[bytes], *, settle: bool = True
) -> tuple[bytes, bool]:
    """Feed `reads` to a new connection (letting tasks run between reads when `settle`)."""
    conn = Connection(listener)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    for data in reads:
        conn.data_received(data)
        if settle:
            await _settle()
    await _settle()
    conn.eof_received()
    await _settle()
    conn.connection_lost(None)
    await asyncio.sleep(0)
    return bytes(transport.out), transport.closed


_HEADS = [
    b"GET /hit HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /hit?q=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n",
    b"HEAD /hit HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /hit HTTP/1.0\r\n\r\n",
    b"GET /hit HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /hit HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET http://other.example/hit HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /hit HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /hit HTTP/1.1\r\n\r\n",
    b"GET /hit HTTP/1.1\r\nHost: bad host\r\n\r\n",
    b"GET /h\xffit HTTP/1.1\r\nHost: h\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"TRACE /hit HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /hit HTTP/2.0\r\nHost: h\r\n\r\n",
    b"POST /hit HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /hit HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /hit HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /hit HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"\r\nGET /hit HTTP/1.1\r\nHost: h\r\n\r\n",
    b"get /hit HTTP/1.1\r\nHost: h\r\n\r\n",
    b"FOO /hit HTTP/1.1\r\nHost: h\r\n\r\n",
    b"PURGE /hit HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /hit HTTP/1.1\r\nHost: h\r\nX-High: \xe9\xff\r\n\r\n",
    b"POST /hit HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
    b"GET /hit HTTP/1.1\r\nHost: h\r\n\r\nGET /hit HTTP/1.1\r\nHo",
]


@st.composite
def _reads(draw: st.DrawFn) -> list[bytes]:
    """A connection's reads: known heads, whole or split, joined, mixed with random bytes."""
    pieces = draw(
        st.lists(
            st.one_of(
                st.sampled_from(_HEADS),
                st.binary(max_size=40),
                st.lists(st.sampled_from(_HEADS), min_size=2, max_size=3).map(b"".join),
            ),
            min_size=1,
            max_size=8,
        )
    )
    reads: list[bytes] = []
    for piece in pieces:
        if len(piece) > 1 and draw(st.booleans()):
            cut = draw(st.integers(1, len(piece) - 1))
            reads += [piece[:cut], piece[cut:]]
        else:
            reads.append(piece)
    return reads


@settings(max_examples=400, deadline=None)
@given(reads=_reads(), settle=st.booleans())
def test_the_memo_never_changes_an_answer(reads: list[bytes], settle: bool) -> None:
    async def run() -> None:
        plain, plain_echo, plain_metrics = _listener(0)
        learnt, learnt_echo, learnt_metrics = _listener(4096)
        # Teach the memo every read (and every known head) on connections of their own.
        for data in [*reads, *_HEADS]:
            await _converse(learnt, [data])
        learnt_echo.seen.clear()
        refused_before = sum(learnt_metrics.refused_requests.values())
        assert learnt.heads, "the memo learnt nothing: the comparison would be empty"
        assert not plain.heads
        expected = await _converse(plain, reads, settle=settle)
        got = await _converse(learnt, reads, settle=settle)
        assert got == expected
        assert learnt_echo.seen == plain_echo.seen
        refused = sum(learnt_metrics.refused_requests.values()) - refused_before
        assert refused == sum(plain_metrics.refused_requests.values())

    asyncio.run(run())


async def test_only_accepted_whole_heads_are_remembered() -> None:
    listener, _, _ = _listener(4096)
    for data in _HEADS:
        await _converse(listener, [data])
    remembered = set(listener.heads)
    assert b"GET /hit HTTP/1.1\r\nHost: h\r\n\r\n" in remembered
    assert b"GET http://other.example/hit HTTP/1.1\r\nHost: h\r\n\r\n" in remembered
    # Refusals, bodies, close, upgrades and the proxy's own answers are parsed every time.
    for data in (
        b"GET /hit HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /hit HTTP/1.1\r\n\r\n",
        b"GET /hit HTTP/1.1\r\nHost: bad host\r\n\r\n",
        b"GET /h\xffit HTTP/1.1\r\nHost: h\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        b"TRACE /hit HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /hit HTTP/2.0\r\nHost: h\r\n\r\n",
        b"POST /hit HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /hit HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /hit HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ):
        assert data not in remembered, data
    # A read of two requests is not one head.
    await _converse(listener, [_HEADS[0] + _HEADS[0]])
    assert _HEADS[0] + _HEADS[0] not in listener.heads


async def test_a_refused_head_is_refused_and_counted_every_time() -> None:
    listener, _, metrics = _listener(4096)
    bad = b"GET /hit HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    for _ in range(3):
        out, closed = await _converse(listener, [bad])
        assert out.startswith(b"HTTP/1.1 400 ") and closed
    assert metrics.refused_requests == {"host": 3}


async def test_the_memo_is_bounded_under_endless_variety() -> None:
    listener, echo, _ = _listener(64)
    for i in range(1000):
        await _converse(listener, [b"GET /hit/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i])
        assert len(listener.heads) <= 64
    assert len(echo.seen) == 1000
    # The oldest go first: the most recent heads are still there.
    recent = [b"GET /hit/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(960, 1000)]
    assert all(data in listener.heads for data in recent)
    # Large reads are never kept (hashing them would cost more than parsing).
    big = b"GET /hit HTTP/1.1\r\nHost: h\r\nX-Pad: %s\r\n\r\n" % (b"p" * 4000)
    await _converse(listener, [big])
    assert big not in listener.heads


@pytest.mark.parametrize("sections", ["shared", "distinct"])
async def test_hostile_variety_of_large_heads_stays_within_the_memory_budget(sections: str) -> None:
    # Distinct heads with many fields: each parse costs far more than its bytes (a review
    # measured ~40 MB for 2047 such heads before the memo counted fields). Either one field
    # section for all (shared by the memo) or a different one per head (shared by none).
    budget = 2 << 20
    echo = _Echo()
    listener = Listener(
        echo, ListenerLimits(head_memo_entries=4096, head_memo_bytes=budget), metrics=None
    )
    listener.now = 1.0
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1500):
            tag = i if sections == "distinct" else 0
            fields = b"".join(b"X-F%d: v%d\r\n" % (f, tag) for f in range(40))
            await _converse(listener, [b"GET /hit/%d HTTP/1.1\r\nHost: h\r\n%s\r\n" % (i, fields)])
            echo.seen.clear()
        # What the memo holds, not garbage waiting for the collector (whose thresholds an
        # in-process service started by an earlier test may have raised: proxy._gc).
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert listener.heads  # remembered, within the budget
    assert grown < 2 * budget, grown
    # A head with more fields than any client sends is never remembered.
    many = b"".join(b"X-G%d: v\r\n" % i for i in range(60))
    data = b"GET /hit HTTP/1.1\r\nHost: h\r\n%s\r\n" % many
    await _converse(listener, [data])
    assert data not in listener.heads


@pytest.mark.parametrize(
    ("fields", "sections"),
    [
        (b"Host: 127.0.0.1:41234\r\n", "shared"),  # one client (wrk, a service), many URLs
        (
            b"Host: h\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: text/html\r\n"
            b"Accept-Language: en-GB,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
            b"Referer: https://example.org/some/page\r\nDNT: 1\r\nSec-Fetch-Dest: document\r\n"
            b"Sec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n",
            "shared",
        ),
        (b"Host: h\r\nX-Id: %d\r\n", "distinct"),
        (b"Host: h\r\n", "long targets"),  # the target is most of the head
    ],
)
async def test_the_memo_counts_at_least_what_its_heads_hold(fields: bytes, sections: str) -> None:
    # The budget is only a bound if the estimate covers the memory: remembered heads, their
    # shared or own field sections, and what a handler derives from them (load contexts from
    # several client addresses: a review measured ~3 x the budget before they were counted).
    echo = _Echo()
    listener = Listener(echo, ListenerLimits(head_memo_bytes=64 << 20), metrics=None)
    listener.now = 1.0
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            section = fields % i if sections == "distinct" else fields
            target = f"/hit/k{i}?size=1024" + (
                "&" + "a" * 1900 if sections == "long targets" else ""
            )
            data = b"GET %s HTTP/1.1\r\n%s\r\n" % (target.encode(), section)
            await _converse(listener, [data])
            head = listener.heads[data]
            head.express = f"GET {target}"
            # What the handler derives, as it does (proxy._handler._Flight.context): a load
            # context per client address, DERIVED_MAX at most; the longest addresses (IPv6
            # with an IPv4 tail, 45 characters), a new string per connection as the socket's.
            for a in range(10):
                peer = "".join(f"ffff:ffff:ffff:ffff:ffff:ffff:255.255.{100 + a}.200")
                if len(head.derived) < DERIVED_MAX:
                    context = context_fields(
                        upstream_headers(head, peer, shared=True), credentials=False
                    )
                    head.derived[("context", peer, False)] = context
            echo.seen.clear()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    memo = listener._heads
    assert len(memo.entries) == 2000
    assert memo.sections == (2000 if sections == "distinct" else 1)
    print(f"{sections}: {grown / 2000:.0f} bytes a head, counted {memo.bytes / 2000:.0f}")
    assert grown <= memo.bytes, (grown, memo.bytes)


async def test_a_remembered_head_on_a_busy_connection_waits_its_turn() -> None:
    # A repeat that arrives while a slow answer is under way is queued, not answered first.
    listener, echo, _ = _listener(4096)
    fast = b"GET /hit HTTP/1.1\r\nHost: h\r\n\r\n"
    await _converse(listener, [fast])
    assert fast in listener.heads
    echo.seen.clear()
    slow = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
    out, _ = await _converse(listener, [slow, fast], settle=False)
    assert [(s[0], s[2]) for s in echo.seen] == [("slow ", "/slow"), ("fast", "/hit")]
    assert out.count(b"HTTP/1.1 200 OK") == 2


async def test_a_read_that_ends_a_body_is_not_remembered_as_a_head() -> None:
    # A read that finishes a POST's body and then holds one whole head must not be kept under
    # its bytes: the same bytes at a message boundary are two pipelined requests, not one.
    learnt, echo, _ = _listener(4096)
    plain, plain_echo, _ = _listener(0)
    hit = b"GET /hit HTTP/1.1\r\nHost: h\r\n\r\n"
    secret = b"GET /hit/secret HTTP/1.1\r\nHost: h\r\n\r\n"
    post = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(secret)
    await _converse(learnt, [post, secret + hit])
    assert secret + hit not in learnt.heads
    echo.seen.clear()
    got = await _converse(learnt, [secret + hit])
    expected = await _converse(plain, [secret + hit])
    assert [s[2] for s in echo.seen] == [s[2] for s in plain_echo.seen] == ["/hit/secret", "/hit"]
    assert got == expected


async def test_what_happens_to_a_request_later_does_not_change_its_remembered_head() -> None:
    # A head queued behind a slow answer is remembered; a malformed read after it clears that
    # request's keep-alive, which must not make every later repeat close its connection.
    learnt, _, _ = _listener(4096)
    plain, _, _ = _listener(0)
    hit = b"GET /hit HTTP/1.1\r\nHost: h\r\n\r\n"
    slow = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
    await _converse(learnt, [slow, hit, b"\x01bad\r\n\r\n"], settle=False)
    assert hit in learnt.heads
    got = await _converse(learnt, [hit, hit])
    expected = await _converse(plain, [hit, hit])
    assert got == expected
    assert got[0].count(b"HTTP/1.1 200 OK") == 2
