"""The operations issue 12 added to the HTTP peer protocol, over real sockets on loopback:
lookup, put (with the record kind), leave, ping; and which failures mean "unreachable".

(The HTTP transport is the stop-gap until the binary peer protocol lands; these tests hold it
to the same ``PeerTransport`` contract the in-process transport implements.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.support.net import free_port
from tokencache import Entry, HttpTransport, Kind, PeerError, Workspace

SECRET = "peer-secret-for-ops-tests"


async def echo(key: str) -> Entry:
    if key.startswith("pass/"):
        return Entry(b"TCP1private", 30, Kind.MARKER)
    return Entry(key.encode("utf-8"), 30)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Workspace, str]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    other = f"http://127.0.0.1:{free_port()}"
    ws = Workspace(url, peer_secret=SECRET)
    ws.set_peers([url, other])
    ws.new_group("echo", 1 << 20, echo)
    await ws.serve("127.0.0.1", port)
    try:
        yield ws, url
    finally:
        await ws.close()


async def test_lookup_answers_from_the_cache_only_with_ttl_and_kind(
    server: tuple[Workspace, str],
) -> None:
    ws, url = server
    transport = HttpTransport(secret=SECRET)
    try:
        assert await transport.lookup(url, "echo", "k é/+") is None  # never loads
        group = ws.get_group("echo")
        assert group is not None and group.stats.local_loads == 0
        await transport.fetch(url, "echo", "k é/+")
        found = await transport.lookup(url, "echo", "k é/+")
        assert found is not None
        assert found.value == "k é/+".encode() and found.kind is Kind.VALUE
        assert found.ttl is not None and 0 < found.ttl <= 30
        marker = await transport.fetch(url, "echo", "pass/x")
        assert marker.kind is Kind.MARKER
        looked = await transport.lookup(url, "echo", "pass/x")
        assert looked is not None and looked.kind is Kind.MARKER
    finally:
        await transport.close()


async def test_put_stores_with_its_ttl_and_kind_and_keeps_a_live_copy(
    server: tuple[Workspace, str],
) -> None:
    ws, url = server
    transport = HttpTransport(secret=SECRET)
    group = ws.get_group("echo")
    assert group is not None
    try:
        await transport.put(url, "echo", "handed", b"\x00value\xff", 12.0)
        found = group.main_cache.lookup("handed")
        assert found is not None and found[0] == b"\x00value\xff" and not found[2]
        assert found[1] is not None and 11 < found[1] <= 12
        await transport.put(url, "echo", "handed", b"other", 50.0)  # a live copy wins
        assert group.peek("handed") == b"\x00value\xff"
        await transport.put(url, "echo", "marked", b"TCP1x", 5.0, kind=Kind.MARKER)
        assert group.peek("marked") is None
        assert (await group.get_fetched("marked")).kind is Kind.MARKER
        await transport.put(url, "echo", "never", b"TCE1", 5.0, kind=Kind.TRANSIENT)
        assert group.main_cache.lookup("never") is None
    finally:
        await transport.close()


async def test_leave_takes_the_member_off_the_ring_and_pings_follow_leaving(
    server: tuple[Workspace, str],
) -> None:
    ws, url = server
    transport = HttpTransport(secret=SECRET)
    try:
        other = next(p for p in ws.peers if p != url)
        await transport.ping(url)
        await transport.leave(url, other)
        assert ws.peers == (url,)
        ws.leaving = True
        with pytest.raises(PeerError) as caught:
            await transport.ping(url)
        assert not caught.value.unreachable
    finally:
        await transport.close()


async def test_unsigned_membership_requests_are_refused(server: tuple[Workspace, str]) -> None:
    ws, url = server
    transport = HttpTransport(secret="wrong secret")
    try:
        other = next(p for p in ws.peers if p != url)
        with pytest.raises(PeerError):
            await transport.leave(url, other)
        assert other in ws.peers
    finally:
        await transport.close()


async def test_a_refused_connection_is_unreachable() -> None:
    transport = HttpTransport()
    try:
        with pytest.raises(PeerError) as caught:
            await transport.ping(f"http://127.0.0.1:{free_port()}")
        assert caught.value.unreachable
    finally:
        await transport.close()


async def test_a_slow_answer_is_not_unreachable() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    transport = HttpTransport(timeout=0.3)
    try:
        with pytest.raises(PeerError) as caught:
            await transport.ping(f"http://127.0.0.1:{port}")
        assert not caught.value.unreachable  # read timeout of a live peer: slow, not dead
    finally:
        release.set()
        await transport.close()
        await runner.cleanup()
