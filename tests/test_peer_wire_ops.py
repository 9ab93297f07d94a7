"""The membership and hand-off operations over the binary peer protocol, on loopback sockets:
lookup and put carry the record kind, leave takes a member off the ring, a leaving process refuses
pings (as an answer, not as unreachable), and only a peer that cannot be reached is unreachable."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.net import free_port
from tokencache import Entry, Kind, PeerError, WireTransport, Workspace

SECRET = "peer-secret-for-ops-tests"


async def echo(key: str) -> Entry:
    if key.startswith("pass/"):
        return Entry(b"TCP1private", 30, Kind.MARKER)
    if key.startswith("fault/"):
        return Entry(b"TCE1", 30, Kind.TRANSIENT)
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


async def test_lookup_and_fetch_carry_ttl_and_kind(server: tuple[Workspace, str]) -> None:
    ws, url = server
    transport = WireTransport(secret=SECRET)
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
        assert marker.kind is Kind.MARKER and marker.loaded
        looked = await transport.lookup(url, "echo", "pass/x")
        assert looked is not None and looked.kind is Kind.MARKER
        again = await transport.fetch(url, "echo", "pass/x")  # the cached path keeps the kind
        assert again.kind is Kind.MARKER and not again.loaded
        fault = await transport.fetch(url, "echo", "fault/x")
        assert fault.kind is Kind.TRANSIENT
        assert await transport.lookup(url, "echo", "fault/x") is None  # stored nowhere
        assert group.stats.local_load_errs == 1 and group.stats.local_load_markers == 1
    finally:
        await transport.close()


async def test_put_stores_with_its_ttl_and_kind_and_keeps_a_live_copy(
    server: tuple[Workspace, str],
) -> None:
    ws, url = server
    transport = WireTransport(secret=SECRET)
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


async def test_leave_takes_the_member_off_the_ring_and_a_leaving_process_refuses_pings(
    server: tuple[Workspace, str],
) -> None:
    ws, url = server
    transport = WireTransport(secret=SECRET)
    try:
        other = next(p for p in ws.peers if p != url)
        await transport.ping(url)
        await transport.leave(url, other + "/")
        assert ws.peers == (url,)
        ws.leaving = True
        with pytest.raises(PeerError) as caught:
            await transport.ping(url)
        assert not caught.value.unreachable  # it answered: leaving, not dead
        ws.leaving = False
        ws.set_ready(False)
        with pytest.raises(PeerError) as caught:
            await transport.ping(url)
        assert not caught.value.unreachable
    finally:
        await transport.close()


async def test_membership_requests_with_the_wrong_secret_change_nothing(
    server: tuple[Workspace, str],
) -> None:
    ws, url = server
    transport = WireTransport(secret="wrong secret", liveness_timeout=2.0)
    try:
        other = next(p for p in ws.peers if p != url)
        with pytest.raises(PeerError):
            await transport.leave(url, other)
        with pytest.raises(PeerError):
            await transport.put(url, "echo", "forged", b"x", 30.0)
        assert other in ws.peers
        group = ws.get_group("echo")
        assert group is not None and group.main_cache.lookup("forged") is None
    finally:
        await transport.close()


async def test_a_refused_connection_is_unreachable() -> None:
    transport = WireTransport()
    try:
        with pytest.raises(PeerError) as caught:
            await transport.ping(f"http://127.0.0.1:{free_port()}")
        assert caught.value.unreachable
    finally:
        await transport.close()
