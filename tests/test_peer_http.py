"""The peer protocol over real sockets on loopback: round-trips, bad input, auth, metrics, traces."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

import tokencache
from tests.support.net import free_port
from tokencache import Entry, GroupcacheCollector, HttpTransport, NotFound, PeerError, Workspace
from tokencache import _protocol as wire
from tokencache._signing import Signer

SECRET = "peer-secret-for-tests"


async def echo(key: str) -> Entry:
    if key == "context":
        return Entry(tokencache.load_context() or b"none", 0)
    if key == "missing":
        raise NotFound(key)
    if key == "boom":
        raise RuntimeError("secret detail that must not cross the wire")
    return Entry(key.encode("utf-8"), 30)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Workspace, str]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ws = Workspace(url, peer_secret=SECRET)
    ws.set_peers([url])
    ws.new_group("echo", 1 << 20, echo)
    await ws.serve("127.0.0.1", port)
    try:
        yield ws, url
    finally:
        await ws.close()


async def test_fetch_round_trips_value_and_remaining_ttl(server: tuple[Workspace, str]) -> None:
    _, url = server
    transport = HttpTransport(secret=SECRET)
    try:
        value, ttl, loaded, _ = await transport.fetch(url, "echo", "a b+c/d%2F?é✓")
        assert value == "a b+c/d%2F?é✓".encode()
        assert ttl is not None and 29 < ttl <= 30
        assert loaded  # the owner ran its loader for this request
        again = await transport.fetch(url, "echo", "a b+c/d%2F?é✓")
        assert again.value == value
        assert not again.loaded  # now served from the owner's cache
        with pytest.raises(NotFound):
            await transport.fetch(url, "echo", "missing")
        with pytest.raises(PeerError) as err:
            await transport.fetch(url, "echo", "boom")
        assert "secret detail" not in str(err.value)
        with pytest.raises(PeerError, match="404 unknown-group"):
            await transport.fetch(url, "nope", "k")
    finally:
        await transport.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(max_size=200))
async def test_any_key_round_trips_exactly(server: tuple[Workspace, str], key: str) -> None:
    _, url = server
    transport = HttpTransport(secret=SECRET)
    try:
        value = (await transport.fetch(url, "echo", key)).value
        assert value.decode("utf-8") == key
    finally:
        await transport.close()


async def _signed_post(
    session: aiohttp.ClientSession, url: str, path: str, body: bytes, **extra: str
):
    headers = Signer(SECRET).headers("POST", path, body)
    headers.update(extra)
    return await session.post(url + path, data=body, headers=headers)


async def test_malformed_requests_get_clear_4xx_and_change_nothing(
    server: tuple[Workspace, str],
) -> None:
    ws, url = server
    group = ws.get_group("echo")
    assert group is not None
    path = wire.path("echo", "get")
    async with aiohttp.ClientSession() as session:
        resp = await _signed_post(session, url, path, b"\xff\xfe")
        assert resp.status == 400 and resp.headers[wire.ERROR_HEADER] == "bad-request"
        resp = await _signed_post(session, url, path, b"k" * (ws.max_key_bytes + 1))
        assert resp.status == 413
        resp = await _signed_post(session, url, path, b"k", **{wire.MIN_TTL_HEADER: "nan"})
        assert resp.status == 400
        resp = await _signed_post(
            session, url, wire.path("echo", "remove"), b"k", **{wire.IF_DIGEST_HEADER: "zz"}
        )
        assert resp.status == 400
        resp = await _signed_post(session, url, wire.path("echo", "frobnicate"), b"k")
        assert resp.status == 400
        resp = await _signed_post(session, url, wire.path("nope", "get"), b"k")
        assert resp.status == 404 and resp.headers[wire.ERROR_HEADER] == "unknown-group"
        resp = await session.get(url + path)
        assert resp.status == 405
    assert len(group.main_cache) == 0
    assert group.stats.local_loads == 0
    # and the server still answers
    transport = HttpTransport(secret=SECRET)
    try:
        assert (await transport.fetch(url, "echo", "still-ok"))[0] == b"still-ok"
    finally:
        await transport.close()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    group=st.text(max_size=20),
    op=st.sampled_from(["get", "remove", "", "x"]),
    body=st.binary(max_size=300),
    headers=st.dictionaries(
        st.sampled_from([wire.MIN_TTL_HEADER, wire.IF_DIGEST_HEADER, "X-Tokencache-Nonce"]),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=70),
        max_size=3,
    ),
)
async def test_fuzzed_peer_requests_never_crash_the_server(
    server: tuple[Workspace, str], group: str, op: str, body: bytes, headers: dict[str, str]
) -> None:
    _, url = server
    from urllib.parse import quote

    path = f"{wire.PREFIX}/{quote(group, safe='')}/{op}"
    async with aiohttp.ClientSession() as session:
        signed = Signer(SECRET).headers("POST", path, body)
        signed.update(headers)
        async with session.post(url + path, data=body, headers=signed) as resp:
            assert resp.status < 500 or resp.headers.get(wire.ERROR_HEADER) == "load-failed"
        async with session.post(url + path, data=body) as resp:
            assert resp.status in (401, 404, 405)


async def test_unsigned_badly_signed_and_replayed_requests_get_401(
    server: tuple[Workspace, str],
) -> None:
    ws, url = server
    path = wire.path("echo", "get")
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, data=b"k") as resp:
            assert resp.status == 401
            assert await resp.read() == b"peer request not authenticated\n"
        bad = Signer("wrong-secret").headers("POST", path, b"k")
        async with session.post(url + path, data=b"k", headers=bad) as resp:
            assert resp.status == 401
        good = Signer(SECRET).headers("POST", path, b"k")
        async with session.post(url + path, data=b"k", headers=good) as resp:
            assert resp.status == 200 and await resp.read() == b"k"
        async with session.post(url + path, data=b"k", headers=good) as resp:  # replay
            assert resp.status == 401
        tampered = Signer(SECRET).headers("POST", path, b"k")
        async with session.post(url + path, data=b"other", headers=tampered) as resp:
            assert resp.status == 401
        old = Signer(SECRET, wall_clock=lambda: 1000.0).headers("POST", path, b"k")
        async with session.post(url + path, data=b"k", headers=old) as resp:
            assert resp.status == 401
    assert ws.server_stats.unauthorized == 5
    registry = CollectorRegistry()
    registry.register(GroupcacheCollector(ws))
    text = generate_latest(registry).decode()
    assert 'tokencache_peer_requests_refused_total{reason="unauthorized"} 5.0' in text


async def test_cluster_over_http_loads_once_and_exports_groupcache_metrics() -> None:
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
    transport = HttpTransport(secret=SECRET)
    try:
        context = bytes(range(256))
        value, _, loaded, _ = await transport.fetch(url, "echo", "context", context=context)
        assert (value, loaded) == (context, True)
        assert (await transport.fetch(url, "echo", "context"))[0] == b"none"
    finally:
        await transport.close()
