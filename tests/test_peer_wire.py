"""The peer protocol over real sockets on loopback: every operation, multiplexing, bad input,
authentication both ways (a host without the secret can neither ask nor answer), fuzzing,
liveness, metrics and traces."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

import tokencache
from tests.support import peer_wire as pw
from tests.support.net import free_port
from tokencache import (
    Entry,
    GroupcacheCollector,
    Kind,
    NotFound,
    PeerError,
    WireTransport,
    Workspace,
)

SECRET = "peer-secret-for-tests"
KEY = SECRET.encode()


async def echo(key: str) -> Entry:
    if key == "context":
        return Entry(tokencache.load_context() or b"none", 0)
    if key == "missing":
        raise NotFound(key)
    if key == "boom":
        raise RuntimeError("secret detail that must not cross the wire")
    if key.startswith("sleep:"):
        await asyncio.sleep(float(key.split(":")[1]))
    return Entry(key.encode("utf-8"), 30)


async def serve_group(load: Callable[[str], Awaitable[Entry]]) -> tuple[Workspace, str]:
    """A lone signed workspace on a free loopback port, its group "echo" loaded by `load`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ws = Workspace(url, peer_secret=SECRET)
    ws.set_peers([url])
    ws.new_group("echo", 1 << 20, load)
    await ws.serve("127.0.0.1", port)
    return ws, url


@pytest.fixture
async def server() -> AsyncIterator[tuple[Workspace, str]]:
    ws, url = await serve_group(echo)
    try:
        yield ws, url
    finally:
        await ws.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def in_thread(fn: Callable[[], object]) -> object:
    return await asyncio.to_thread(fn)


async def test_fetch_round_trips_value_and_remaining_ttl(server: tuple[Workspace, str]) -> None:
    _, url = server
    transport = WireTransport(secret=SECRET)
    try:
        value, ttl, loaded, _ = await transport.fetch(url, "echo", "a b+c/d%2F?é✓\n\x00")
        assert value == "a b+c/d%2F?é✓\n\x00".encode()
        assert ttl is not None and 29 < ttl <= 30
        assert loaded  # the owner ran its loader for this request
        again = await transport.fetch(url, "echo", "a b+c/d%2F?é✓\n\x00")
        assert again.value == value
        assert not again.loaded  # now served from the owner's cache
        with pytest.raises(NotFound):
            await transport.fetch(url, "echo", "missing")
        with pytest.raises(PeerError) as err:
            await transport.fetch(url, "echo", "boom")
        assert "secret detail" not in str(err.value) and not err.value.unreachable
        with pytest.raises(PeerError, match="bad-request"):
            await transport.fetch(url, "nope", "k")
        # the errors cost no connection: the same one still answers
        assert (await transport.fetch(url, "echo", "after")).value == b"after"
    finally:
        await transport.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(max_size=200).filter(lambda k: not k.startswith(("sleep:", "context"))))
async def test_any_key_round_trips_exactly(server: tuple[Workspace, str], key: str) -> None:
    _, url = server
    transport = WireTransport(secret=SECRET)
    try:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            with pytest.raises(UnicodeEncodeError):
                await transport.fetch(url, "echo", key)
            return
        if key in ("missing", "boom"):
            return
        value, _, _, _ = await transport.fetch(url, "echo", key)
        assert value.decode("utf-8") == key
    finally:
        await transport.close()


async def test_every_operation_round_trips(server: tuple[Workspace, str]) -> None:
    ws, url = server
    group = ws.get_group("echo")
    assert group is not None
    transport = WireTransport(secret=SECRET)
    try:
        assert await transport.lookup(url, "echo", "k") is None  # lookup never loads
        assert group.stats.local_loads == 0
        await transport.put(url, "echo", "k", b"handed", 20.0)
        found = await transport.lookup(url, "echo", "k")
        assert found is not None and found.value == b"handed" and 19 < (found.ttl or 0) <= 20
        await transport.remove(url, "echo", "k", if_digest=hashlib.sha256(b"other").hexdigest())
        assert await transport.lookup(url, "echo", "k") is not None  # digest differs: kept
        await transport.remove(url, "echo", "k", if_digest=hashlib.sha256(b"handed").hexdigest())
        assert await transport.lookup(url, "echo", "k") is None
        await transport.put(url, "echo", "forever", b"v", None)
        assert (await transport.fetch(url, "echo", "forever")) == (b"v", None, False, Kind.VALUE)
        other = "http://127.0.0.1:1"
        ws.set_peers([url, other])
        await transport.leave(url, other + "/")
        assert ws.peers == (url,)
        await transport.ping(url)
    finally:
        await transport.close()


async def test_many_requests_share_one_connection_and_answer_out_of_order() -> None:
    # The slow load waits for the test, not for a clock: it is under way before the quick ones
    # are sent and ends only after all 200 were answered on the same connection.
    started, release = asyncio.Event(), asyncio.Event()

    async def load(key: str) -> Entry:
        if key == "slow":
            started.set()
            await release.wait()
        return Entry(key.encode(), 30)

    ws, url = await serve_group(load)
    transport = WireTransport(secret=SECRET)
    try:
        slow = asyncio.create_task(transport.fetch(url, "echo", "slow"))
        await asyncio.wait_for(started.wait(), 10)
        fetches = asyncio.gather(*(transport.fetch(url, "echo", f"q{i}") for i in range(200)))
        quick = await asyncio.wait_for(fetches, 10)  # in-order answers would never get here
        assert not slow.done()  # 200 answers overtook the slow one on the same connection
        assert [f.value for f in quick] == [f"q{i}".encode() for i in range(200)]
        release.set()
        assert (await asyncio.wait_for(slow, 10)).value == b"slow"
        assert ws._server is not None and len(ws._server._connections) == 1
    finally:
        release.set()
        await transport.close()
        await ws.close()


async def test_unsigned_wrong_secret_replayed_reordered_and_forged_frames_are_refused(
    server: tuple[Workspace, str],
) -> None:
    ws, url = server
    port = port_of(url)

    def attacks() -> list[str]:
        outcomes = []
        with pw.WireClient(port, None) as c:  # no secret: refused in the hello
            try:
                c.handshake()
            except pw.WireError as exc:
                outcomes.append(str(exc))
        with pw.WireClient(port, KEY) as c:  # proves a wrong secret: closed, nothing answered
            c.handshake(proof_secret=b"wrong")
            c.send(c.frame(pw.GET, 1, pw.get_payload("echo", b"k")))
            try:
                c.read_frame()
            except pw.WireError as exc:
                outcomes.append(str(exc))
        with pw.WireClient(port, KEY) as c:  # a real session, then a replayed frame
            c.handshake()
            frame = c.frame(pw.GET, 1, pw.get_payload("echo", b"k"))
            c.send(frame)
            kind, payload = c.answer(1)
            assert kind == pw.VALUE and pw.value_of(payload)[0] == b"k"
            c.send(frame)
            kind, rid, payload = c.read_frame()
            assert (kind, rid, payload[0]) == (pw.ERROR, 0, pw.ERR_UNAUTHORIZED)
            outcomes.append("replay refused")
        with pw.WireClient(port, KEY) as c:  # frames sent out of order
            c.handshake()
            first = c.frame(pw.PING, 1, b"")
            second = c.frame(pw.PING, 2, b"")
            c.send(second + first)
            kind, rid, _ = c.read_frame()
            assert (kind, rid) == (pw.ERROR, 0)
            outcomes.append("reorder refused")
        with pw.WireClient(port, KEY) as c:  # a frame MAC'd under a key of another session
            c.handshake()
            c.send_key = hashlib.sha256(b"guess").digest()
            c.send(c.frame(pw.GET, 1, pw.get_payload("echo", b"k")))
            kind, rid, _ = c.read_frame()
            assert (kind, rid) == (pw.ERROR, 0)
            outcomes.append("forged refused")
        return outcomes

    outcomes = await in_thread(attacks)
    assert outcomes == [
        "refused with status 3",
        "closed after 0 bytes",
        "replay refused",
        "reorder refused",
        "forged refused",
    ]
    assert ws.server_stats.unauthorized == 5
    registry = CollectorRegistry()
    registry.register(GroupcacheCollector(ws))
    text = generate_latest(registry).decode()
    assert 'tokencache_peer_requests_refused_total{reason="unauthorized"} 5.0' in text


async def test_malformed_and_oversized_input_is_refused_and_changes_nothing(
    server: tuple[Workspace, str], caplog: pytest.LogCaptureFixture
) -> None:
    ws, url = server
    group = ws.get_group("echo")
    assert group is not None
    port = port_of(url)

    def attacks() -> list[object]:
        seen: list[object] = []
        with pw.WireClient(port, KEY) as c:  # HTTP on the peer port
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            seen.append(c.recv_exactly(72)[5])  # refusal hello, status 2
        with pw.WireClient(port, KEY) as c:  # a version we do not speak
            c.send(pw.client_hello(version=9))
            hello = c.recv_exactly(72)
            seen.append((hello[4], hello[5]))  # our version, status 1
        for frame in (
            struct.pack("!IBI", 0x7FFFFFFF, pw.GET, 1),  # 2 GiB announced
            struct.pack("!IBI", 40, 0x42, 1),  # unknown type
        ):
            with pw.WireClient(port, KEY) as c:
                c.handshake()
                c.send(frame)
                kind, rid, payload = c.read_frame()
                seen.append((kind, rid, payload[0]))
        with pw.WireClient(port, KEY) as c:  # a signed frame whose key is not UTF-8
            c.handshake()
            c.send(c.frame(pw.GET, 1, pw.get_payload("echo", b"\xff\xfe")))
            kind, rid, payload = c.read_frame()
            seen.append((kind, rid, payload[0]))
        with pw.WireClient(port, KEY) as c:  # a key over max_key_bytes
            c.handshake()
            c.send(c.frame(pw.GET, 1, pw.get_payload("echo", b"k" * (ws.max_key_bytes + 1))))
            kind, rid, payload = c.read_frame()
            seen.append((kind, rid, payload[0]))
        return seen

    with caplog.at_level(logging.INFO):
        seen = await in_thread(attacks)
    assert seen == [
        2,
        (1, 1),
        (pw.ERROR, 0, pw.ERR_TOO_LARGE),
        (pw.ERROR, 0, pw.ERR_BAD_REQUEST),
        (pw.ERROR, 0, pw.ERR_BAD_REQUEST),
        (pw.ERROR, 0, pw.ERR_TOO_LARGE),
    ]
    assert ws.server_stats.bad_requests == 6
    assert len(group.main_cache) == 0 and group.stats.local_loads == 0
    refusals = [r for r in caplog.records if "refused peer input" in r.getMessage()]
    assert len(refusals) == 1  # rate-limited: one line for the six
    assert not any(r.exc_info for r in caplog.records)
    transport = WireTransport(secret=SECRET)
    try:  # and the server still answers
        assert (await transport.fetch(url, "echo", "still-ok")).value == b"still-ok"
    finally:
        await transport.close()


_frames = st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=64))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stage=st.sampled_from(["raw", "hello", "session", "frames"]),
    data=st.binary(max_size=300),
    frames=st.lists(_frames, max_size=4),
    header_byte=st.integers(0, 255),
)
async def test_fuzzed_bytes_never_crash_the_port_or_yield_a_value(
    server: tuple[Workspace, str],
    caplog: pytest.LogCaptureFixture,
    stage: str,
    data: bytes,
    frames: list[tuple[int, int, bytes]],
    header_byte: int,
) -> None:
    _ws, url = server
    port = port_of(url)

    def attack() -> list[int]:
        kinds: list[int] = []
        with pw.WireClient(port, KEY, timeout=3) as c:
            try:
                if stage == "raw":
                    c.send(bytes([header_byte]) + data)
                elif stage == "hello":
                    hello = bytearray(pw.client_hello())
                    hello[header_byte % len(hello)] = header_byte
                    c.send(bytes(hello) + data)
                else:
                    c.handshake()
                    if stage == "session":
                        c.send(bytes([header_byte]) + data)
                    else:  # valid-looking frames with MACs from a key the server never issued
                        c.send_key = bytes(32)
                        c.send(b"".join(c.frame(k, r, pl) for k, r, pl in frames) + data)
                # Half-close: the server reads EOF, so it answers what it got and closes.
                c.sock.shutdown(socket.SHUT_WR)
                for _ in range(4):
                    kinds.append(c.read_frame()[0])
            except (pw.WireError, OSError, AssertionError):
                pass
        return kinds

    with caplog.at_level(logging.INFO):
        kinds = await in_thread(attack)
    assert pw.VALUE not in kinds and pw.OK not in kinds
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    transport = WireTransport(secret=SECRET)
    try:
        assert (await transport.fetch(url, "echo", "alive")).value == b"alive"
    finally:
        await transport.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _impostor(
    handle: Handler, writers: list[asyncio.StreamWriter]
) -> tuple[asyncio.Server, str]:
    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(tracked, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


async def _stop(servers: list[asyncio.Server], writers: list[asyncio.StreamWriter]) -> None:
    for srv in servers:
        srv.close()
    for writer in writers:
        writer.close()
    for srv in servers:
        await srv.wait_closed()
    await asyncio.sleep(0)


async def test_a_host_without_the_secret_cannot_get_a_value_accepted(
    server: tuple[Workspace, str],
) -> None:
    _, real = server
    real_port = port_of(real)
    tamper = {"on": False}

    async def no_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(40)  # claims to run without a secret, then "answers"
        writer.write(b"TKCP\x01\x00\x00\x00" + bytes(64))
        value = struct.pack("!Bd", 0, 0.0) + b"poison"
        writer.write(struct.pack("!IBI", 5 + len(value), pw.VALUE, 1) + value)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    async def guessed_proof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(40)
        writer.write(b"TKCP\x01\x00\x01\x00" + bytes(32) + hashlib.sha256(b"guess").digest())
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Forwards the real handshake both ways (so proofs verify), then flips a byte of every
        # frame the real server sends: the man in the middle edits an answer.
        up_r, up_w = await asyncio.open_connection("127.0.0.1", real_port)
        writers.append(up_w)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, edit: bool) -> None:
            seen = 0
            while data := await src.read(65536):
                if edit and tamper["on"] and seen >= 72:
                    data = data[:-1] + bytes([data[-1] ^ 0x01])
                seen += len(data)
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_w, False), pump(up_r, writer, True))

    servers = []
    writers: list[asyncio.StreamWriter] = []
    transport = WireTransport(secret=SECRET, liveness_timeout=1.0)
    try:
        for handler in (no_auth, guessed_proof):
            srv, url = await _impostor(handler, writers)
            servers.append(srv)
            with pytest.raises(PeerError) as caught:
                await transport.fetch(url, "echo", "k")
            assert caught.value.unreachable and "unauthorized" in str(caught.value)
        srv, url = await _impostor(relay, writers)
        servers.append(srv)
        assert (await transport.fetch(url, "echo", "k")).value == b"k"  # honest relay: fine
        tamper["on"] = True
        with pytest.raises(PeerError) as caught:
            await transport.fetch(url, "echo", "k2")
        assert caught.value.unreachable and "MAC" in str(caught.value)
    finally:
        await transport.close()
        await _stop(servers, writers)


async def test_slow_owner_is_not_dead_and_a_black_hole_is_detected_in_the_liveness_timeout(
    server: tuple[Workspace, str],
) -> None:
    _, real = server
    frozen = {"on": False}

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", port_of(real))
        writers.append(up_w)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not frozen["on"]:  # frozen: bytes vanish, the connection stays open
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

    writers: list[asyncio.StreamWriter] = []
    srv, url = await _impostor(relay, writers)
    loop = asyncio.get_running_loop()
    transport = WireTransport(secret=SECRET, liveness_timeout=0.5, max_load_time=5.0)
    try:
        started = loop.time()
        fetched = await transport.fetch(url, "echo", "sleep:1.5")  # 3 liveness timeouts
        assert fetched.value == b"sleep:1.5" and loop.time() - started >= 1.5
        short = WireTransport(secret=SECRET, liveness_timeout=0.5, max_load_time=0.8)
        try:
            with pytest.raises(PeerError) as caught:
                await short.fetch(url, "echo", "sleep:1.6")
            assert not caught.value.unreachable  # alive, only slower than allowed
        finally:
            await short.close()
        frozen["on"] = True  # the pooled connection now leads into a black hole
        started = loop.time()
        with pytest.raises(PeerError) as caught:
            await transport.fetch(url, "echo", "after-freeze")
        assert caught.value.unreachable
        assert loop.time() - started < 0.5 + 0.5
        with pytest.raises(PeerError) as caught:
            await transport.ping(url)  # ping takes the same path
        assert caught.value.unreachable
    finally:
        await transport.close()
        await _stop([srv], writers)


async def test_without_a_secret_both_sides_run_unauthenticated_and_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ws = Workspace(url)
    ws.set_peers([url])
    ws.new_group("echo", 1 << 20, echo)
    with caplog.at_level(logging.WARNING, "tokencache.server"):
        await ws.serve("127.0.0.1", port)
    transport = WireTransport()
    signed = WireTransport(secret=SECRET)
    try:
        assert (await transport.fetch(url, "echo", "open")).value == b"open"
        with pytest.raises(PeerError, match="unauthorized"):
            await signed.fetch(url, "echo", "open")  # a client with a secret insists on it
    finally:
        await transport.close()
        await signed.close()
        await ws.close()
    warnings = [r for r in caplog.records if "no peer secret" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_silent_connect_nobody_waits_for_leaves_no_unretrieved_error() -> None:
    # A health ping gives up after its own timeout (1 s in the proxy) while the shared connect to a
    # frozen peer (SIGSTOP: the kernel accepts, nobody answers the handshake) runs on to the
    # liveness timeout (3 s) and fails: its error must not be left for the event loop to log as
    # "Task exception was never retrieved" (one ERROR with a traceback per ping of a frozen peer).
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepted, never answered

    writers: list[asyncio.StreamWriter] = []
    srv, url = await _impostor(silent, writers)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    transport = WireTransport(secret=SECRET, liveness_timeout=0.3)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await transport.ping(url)
        await asyncio.sleep(0.6)  # the connect's own liveness timeout has passed
        gc.collect()
        await asyncio.sleep(0)
        with pytest.raises(PeerError) as caught:
            await transport.ping(url)  # a caller that waits gets the unreachable error
        assert caught.value.unreachable
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
        await transport.close()
        await _stop([srv], writers)
    assert unhandled == []


async def test_connect_refused_is_unreachable() -> None:
    transport = WireTransport(secret=SECRET)
    try:
        with pytest.raises(PeerError) as caught:
            await transport.fetch(f"http://127.0.0.1:{free_port()}", "g", "k")
        assert caught.value.unreachable
    finally:
        await transport.close()


async def test_cluster_over_the_wire_loads_once_and_exports_groupcache_metrics() -> None:
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    loads = 0
    gate = asyncio.Event()

    async def load(key: str) -> Entry:
        nonlocal loads
        loads += 1
        await gate.wait()
        return Entry(b"v-" + hashlib.sha256(key.encode()).hexdigest().encode(), 60)

    workspaces = []
    try:
        for url, port in zip(urls, ports, strict=True):
            ws = Workspace(url, peer_secret=SECRET)
            ws.set_peers(urls)
            ws.new_group("g", 1 << 20, load)
            await ws.serve("127.0.0.1", port)
            workspaces.append(ws)
        tasks = [
            asyncio.create_task(workspaces[i % 3].get_group("g").get("herd"))  # type: ignore[union-attr]
            for i in range(300)
        ]
        await asyncio.sleep(0.05)
        gate.set()
        values = await asyncio.gather(*tasks)
        assert len(set(values)) == 1
        assert loads == 1
        registry = CollectorRegistry()
        registry.register(GroupcacheCollector(workspaces[0], namespace="demo"))
        text = generate_latest(registry).decode()
        for name in (
            "demo_groupcache_gets_total",
            "demo_groupcache_hits_total",
            "demo_groupcache_peer_loads_total",
            "demo_groupcache_peer_errors_total",
            "demo_groupcache_loads_total",
            "demo_groupcache_loads_deduped_total",
            "demo_groupcache_local_load_total",
            "demo_groupcache_local_load_errs_total",
            "demo_groupcache_server_requests_total",
            "demo_groupcache_crosstalk_refusals_total",
            "demo_groupcache_get_from_peers_latency_slowest_milliseconds",
            "demo_groupcache_cache_bytes",
            "demo_groupcache_cache_items",
            "demo_groupcache_cache_gets_total",
            "demo_groupcache_cache_hits_total",
            "demo_groupcache_cache_evictions_total",
            "demo_groupcache_cache_evictions_nonexpired_total",
        ):
            assert f"\n{name}{{" in text, name
        assert 'demo_groupcache_gets_total{group="g"} 100.0' in text
        assert 'demo_groupcache_cache_items{group="g",type="main"}' in text
        assert 'type="hot"' in text
        assert 'demo_groupcache_peer_errors_total{group="g"} 0.0' in text
    finally:
        for ws in workspaces:
            await ws.close()


async def test_trace_context_crosses_the_peer_hop() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ports = [free_port() for _ in range(2)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    workspaces = []
    try:
        for url, port in zip(urls, ports, strict=True):
            ws = Workspace(url, tracer_provider=provider)
            ws.set_peers(urls)
            ws.new_group("g", 1 << 20, echo)
            await ws.serve("127.0.0.1", port)
            workspaces.append(ws)
        key = next(
            k for k in (f"user-key-{i}" for i in range(100)) if workspaces[0].owner(k) == urls[1]
        )
        assert await workspaces[0].get_group("g").get(key) == key.encode()  # type: ignore[union-attr]
    finally:
        for ws in workspaces:
            await ws.close()
    spans = exporter.get_finished_spans()
    names = {s.name for s in spans}
    assert {
        "tokencache.get",
        "tokencache.peer.fetch",
        "tokencache.peer.serve",
        "tokencache.load",
    } <= names
    assert len({s.context.trace_id for s in spans}) == 1
    serve = next(s for s in spans if s.name == "tokencache.peer.serve")
    fetch = next(s for s in spans if s.name == "tokencache.peer.fetch")
    assert serve.parent is not None and serve.parent.span_id == fetch.context.span_id
    for span in spans:
        assert "user-key" not in span.name
        assert all("user-key" not in str(v) for v in (span.attributes or {}).values())


async def test_load_context_crosses_the_wire_byte_for_byte(server: tuple[Workspace, str]) -> None:
    _, url = server
    transport = WireTransport(secret=SECRET)
    try:
        context = bytes(range(256)) * 256  # 64 KiB, the limit
        value, _, loaded, _ = await transport.fetch(url, "echo", "context", context=context)
        assert (value, loaded) == (context, True)
        assert (await transport.fetch(url, "echo", "context")).value == b"none"
    finally:
        await transport.close()
