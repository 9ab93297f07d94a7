"""A non-owner's hit without a task (`CacheHandler._fetch_soon`, `Connection.hold`), in-process.

The owner's answer is played by hand (the group's ``fetch_soon`` is replaced by one that keeps the
callback), so every ordering can be forced: the answer arrives after the client left, a pipelined
request waits behind a held one, the answer is not a plain fresh response (the slow path takes over
with the same flight, without asking the owner again), and answering raises. Against a real
backend; real peers are exercised by the cluster end-to-end tests.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

import tokencache
from tests.support.fake_transport import FakeTransport
from tests.support.proxy_app import proxy_app
from tokencache.proxy._app import ProxyApp
from tokencache.proxy._handler import RequestIds
from tokencache.proxy._http import Connection

Done = Callable[[tokencache.Fetched | BaseException], None]
# What the owner answers when it cannot give a value (a load that failed there).
_NO_VALUE = tokencache.PeerError("http://owner.test", "load failed")


class _Backend:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.Response(body=b"body of " + request.path.encode(), headers={"X-Seen": "1"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class _Owner:
    """Stands in for the owner: keeps each `fetch_soon` callback for the test to answer."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bytes | None, Done]] = []

    def fetch_soon(self, key: str, context: bytes | None, done: Done) -> bool:
        self.asked.append((key, context, done))
        return True


@pytest.fixture
async def setup() -> AsyncIterator[tuple[ProxyApp, _Backend, _Owner]]:
    backend = _Backend()
    await backend.start()
    ws = tokencache.Workspace()
    app = proxy_app(backend.url, ws)
    owner = _Owner()
    app.group.fetch_soon = owner.fetch_soon  # type: ignore[method-assign]
    await app.start("127.0.0.1", 0)
    try:
        yield app, backend, owner
    finally:
        await app.close()
        await ws.close()
        await backend.stop()


def _connect(app: ProxyApp, peer: str = "127.0.0.1") -> tuple[Connection, FakeTransport]:
    conn = Connection(app.listener)
    transport = FakeTransport(peer)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def _until(check: Callable[[], Any], what: str) -> None:
    async with asyncio.timeout(5):
        while not check():  # noqa: ASYNC110 - the proxy's own tasks set no event to wait on
            await asyncio.sleep(0.01)


def _get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n" % path.encode()


async def test_a_held_request_answers_nothing_until_the_owner_does(setup: Any) -> None:
    app, backend, owner = setup
    conn, transport = _connect(app)
    conn.data_received(_get("/a"))
    assert [key for key, _, _ in owner.asked] == ["GET /a"]
    context = owner.asked[0][1]
    assert context is not None and b"User-Agent: t" in context  # the owner's loader gets them
    assert transport.out == b"" and app.in_flight == 1
    owner.asked[0][2](_NO_VALUE)  # the owner gave no value: the slow path loads it here
    await _until(lambda: b"body of /a" in transport.out, "the slow path's answer")
    assert transport.out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert backend.requests == ["/a"]
    await _until(lambda: app.in_flight == 0, "in_flight back to 0")


async def test_pipelined_requests_wait_behind_a_held_one_and_keep_their_order(
    setup: Any,
) -> None:
    app, backend, owner = setup
    conn, transport = _connect(app)
    conn.data_received(_get("/first") + _get("/second"))
    assert [key for key, _, _ in owner.asked] == ["GET /first"]  # the second waits its turn
    owner.asked[0][2](_NO_VALUE)
    await _until(lambda: len(owner.asked) == 2, "the second request offered to the hit path")
    owner.asked[1][2](_NO_VALUE)
    await _until(lambda: b"body of /second" in transport.out, "both answers")
    assert transport.out.index(b"body of /first") < transport.out.index(b"body of /second")
    assert backend.requests == ["/first", "/second"]


async def test_the_owner_answering_after_the_client_left_costs_nothing(setup: Any) -> None:
    app, backend, owner = setup
    conn, transport = _connect(app)
    conn.data_received(_get("/gone"))
    conn.connection_lost(None)
    owner.asked[0][2](_NO_VALUE)
    await asyncio.sleep(0.05)
    assert transport.out == b""
    assert backend.requests == []  # nobody to answer: the slow path is not started
    assert app.in_flight == 0


async def test_the_slow_path_reuses_the_owners_answer_and_the_flight(setup: Any) -> None:
    app, backend, owner = setup
    # A value the owner loaded for this very request (loaded=True) is a cluster miss: the slow
    # path labels it so, from the answer already in hand (the owner is not asked again).
    stored = await app.group.get_fetched("GET /warm")  # a real stored response, via the backend
    app.group.remove_local("GET /warm")
    assert backend.requests == ["/warm"]
    conn, transport = _connect(app)
    conn.data_received(_get("/warm"))
    owner.asked[0][2](tokencache.Fetched(stored.value, stored.ttl, True, tokencache.Kind.VALUE))
    await _until(lambda: b"body of /warm" in transport.out, "the answer")
    assert b"Cache-Status: tokencache; fwd=miss" in transport.out
    assert backend.requests == ["/warm"]  # no second load
    assert len(owner.asked) == 1


async def test_a_fresh_response_from_the_owner_is_a_hit_written_from_the_callback(
    setup: Any,
) -> None:
    app, backend, owner = setup
    stored = await app.group.get_fetched("GET /hot")
    app.group.remove_local("GET /hot")
    conn, transport = _connect(app)
    conn.data_received(_get("/hot"))
    owner.asked[0][2](tokencache.Fetched(stored.value, stored.ttl, False, tokencache.Kind.VALUE))
    assert transport.out.startswith(b"HTTP/1.1 200 OK\r\n")  # written at once, no task
    assert b"Cache-Status: tokencache; hit; ttl=" in transport.out
    assert transport.out.endswith(b"body of /hot")
    assert app.in_flight == 0
    assert backend.requests == ["/hot"]


async def test_a_broken_answer_ends_at_the_one_boundary(setup: Any) -> None:
    app, _, owner = setup
    conn, transport = _connect(app)
    conn.data_received(_get("/broken"))
    broken = b"TCR2" + b"\x00" * 3  # a record too short to read
    owner.asked[0][2](tokencache.Fetched(broken, 60.0, False, tokencache.Kind.VALUE))
    assert transport.out.startswith(b"HTTP/1.1 500 ")
    assert transport.closed
    assert app.metrics.internal_errors == 1
    assert app.in_flight == 0


async def test_repeats_of_a_head_share_its_fields_but_not_the_client_address(setup: Any) -> None:
    app, _, owner = setup
    for peer in ("10.0.0.1", "10.0.0.2", "10.0.0.1"):
        conn, _ = _connect(app, peer)  # (each held request keeps its connection alive)
        conn.data_received(_get("/same"))  # the same bytes: one remembered head
    contexts = [context or b"" for _, context, _ in owner.asked]
    clients = []
    for context in contexts:
        lines = [line for line in context.split(b"\r\n") if b"X-Forwarded-For: " in line]
        clients.append(lines[0].split(b"X-Forwarded-For: ", 1)[1])
    assert clients == [b"10.0.0.1", b"10.0.0.2", b"10.0.0.1"]
    assert len(set(contexts)) == 3  # each request has its own id
    for _, _, done in owner.asked:
        done(_NO_VALUE)
    await _until(lambda: app.in_flight == 0, "every answer")


async def test_a_drain_waits_for_a_held_request_that_goes_down_the_slow_path(setup: Any) -> None:
    # SIGTERM's drain (wait_idle) must not see the request as finished between the owner's
    # answer and the slow path's task: that moment of "idle" let the shutdown close the
    # connection and cancel the task, and the client got no answer at all.
    app, _, owner = setup
    conn, transport = _connect(app)
    conn.data_received(_get("/d"))
    assert app.in_flight == 1
    app.begin_drain()
    drained = asyncio.create_task(app.wait_idle(5))
    await asyncio.sleep(0)
    owner.asked[0][2](_NO_VALUE)  # no value from the owner: the slow path takes over
    for _ in range(3):
        await asyncio.sleep(0)
    assert app.in_flight == 1
    assert not drained.done(), "the drain ended while the request was still being answered"
    await _until(lambda: b"body of /d" in transport.out, "the slow path's answer")
    assert await drained


def test_request_ids_are_fresh_across_batches_and_handlers() -> None:
    # Drawn 256 at a time: ids must still never repeat, within a batch, across refills and
    # between two handlers (an owner's pass record names its trigger by id).
    first, second = RequestIds(), RequestIds()
    ids = [first() for _ in range(1000)] + [second() for _ in range(1000)]
    assert all(len(i) == 12 for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_other_request_ids_than_its_parent() -> None:
    # A child inherits the parent's unspent buffer: it must not hand out the ids the parent
    # hands out next (another client's pass record would name the same trigger).
    ids = RequestIds()
    ids()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next three ids to the parent, then gone at once
        try:
            os.write(write_end, b"".join(ids() for _ in range(3)))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        child = os.read(read_end, 36)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0 and len(child) == 36
    parent = b"".join(ids() for _ in range(3))
    assert {child[i : i + 12] for i in range(0, 36, 12)}.isdisjoint(
        {parent[i : i + 12] for i in range(0, 36, 12)}
    )
