"""The public port against hostile input, over real sockets: a real aiohttp backend on 127.0.0.1,
the real listener, raw bytes from the client. What the attacker controls is the byte stream; what
is asserted is what the client gets back and what reaches the backend (issue 9, public side)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

import tokencache
from tests.support.proxy_app import proxy_app
from tokencache.proxy._app import ProxyApp
from tokencache.proxy._http_request import ListenerLimits
from tokencache.proxy._metrics import ProxyMetrics

BIG = 256 * 1024


class Backend:
    """Echoes what reached it (method, target, headers, body) and serves a 256 KiB document."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = {
            "method": request.method,
            "target": request.raw_path,
            "headers": [
                [k.decode("latin-1").lower(), v.decode("latin-1")] for k, v in request.raw_headers
            ],
            "body": body.decode("latin-1"),
        }
        self.seen.append(seen)
        return web.Response(text=json.dumps(seen), headers={"Cache-Control": "max-age=60"})

    async def big(self, request: web.Request) -> web.Response:
        self.seen.append({"method": request.method, "target": request.raw_path})
        return web.Response(body=b"b" * BIG)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/big", self.big)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


MakeProxy = Callable[..., Awaitable[tuple[ProxyApp, int]]]


@pytest.fixture
async def make_proxy(backend: Backend) -> AsyncIterator[MakeProxy]:
    started: list[tuple[ProxyApp, tokencache.Workspace]] = []

    async def make(backend_url: str | None = None, **overrides: Any) -> tuple[ProxyApp, int]:
        ws = tokencache.Workspace()
        app = proxy_app(backend_url or backend.url, ws, **overrides)
        started.append((app, ws))
        _, port = await app.start("127.0.0.1", 0)
        return app, port

    try:
        yield make
    finally:
        for app, ws in started:
            await app.close()
            await ws.close()


async def exchange(port: int, data: bytes, *, within: float = 10.0) -> bytes:
    """Send `data` and read everything until the proxy closes (bounded in time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                out += chunk
        return out
    except ConnectionResetError:
        return out
    finally:
        writer.close()


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a stream of Content-Length-framed (or interim) responses."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        raw = rest[length:]
    return out


def only(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    got = responses(raw)
    assert len(got) == 1, got
    return got[0]


# --- request-targets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"CONNECT x:@127.0.0.1:9/steal HTTP/1.1", 405),
        (b"CONNECT 127.0.0.1:9 HTTP/1.1", 405),
        (b"TRACE / HTTP/1.1", 405),
        (b"GET x:@127.0.0.1:9/steal HTTP/1.1", 400),
        (b"GET @127.0.0.1:9/steal HTTP/1.1", 400),
        (b"GET http://x:@127.0.0.1:9/steal HTTP/1.1", 400),
        (b"GET ftp://h/x HTTP/1.1", 400),
        (b"GET * HTTP/1.1", 400),
        (b"GET /a\xff HTTP/1.1", 400),
        (b"GET /a%zz HTTP/1.1", 400),
    ],
)
async def test_targets_that_are_not_proxied_get_a_refusal_and_reach_nothing(
    backend: Backend, make_proxy: MakeProxy, line: bytes, status: int
):
    app, port = await make_proxy()
    got, headers, _ = only(await exchange(port, line + b"\r\nHost: h\r\n\r\n"))
    assert got == status
    assert headers["connection"] == "close"
    if status == 405:
        assert "GET" in headers["allow"]
        assert "CONNECT" not in headers["allow"]
    assert backend.seen == []
    assert app.metrics.internal_errors == 0


async def test_options_asterisk_is_answered_by_the_proxy_and_keeps_the_connection(
    backend: Backend, make_proxy: MakeProxy
):
    _, port = await make_proxy()
    raw = await exchange(
        port,
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\nConnection: close"
        b"\r\n\r\n",
    )
    (first, headers, body), (second, _, _) = responses(raw)
    assert (first, body) == (200, b"")
    assert "OPTIONS" in headers["allow"]
    assert second == 200
    assert [s["target"] for s in backend.seen] == ["/after"]


@pytest.mark.parametrize(
    ("target", "arrives"),
    [
        (b"//127.0.0.1:9/steal", "/api//127.0.0.1:9/steal"),
        (b"/@127.0.0.1:9/steal", "/api/@127.0.0.1:9/steal"),
        (b"/a/../../../etc?x=../y", "/api/etc?x=../y"),
        (b"http://other.example:9/p?q=1", "/api/p?q=1"),
        (b"HTTP://other.example", "/api/"),
    ],
)
async def test_proxied_targets_only_choose_a_path_on_the_backend(
    backend: Backend, make_proxy: MakeProxy, target: bytes, arrives: str
):
    _, port = await make_proxy(backend_url=backend.url + "/api")
    raw = await exchange(port, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % target)
    status, _, body = only(raw)
    assert status == 200
    assert json.loads(body)["target"] == arrives
    assert [s["target"] for s in backend.seen] == [arrives]


async def test_absolute_form_authority_replaces_host(backend: Backend, make_proxy: MakeProxy):
    _, port = await make_proxy()
    raw = await exchange(
        port,
        b"POST http://named.example:81/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n",
    )
    headers = dict(json.loads(only(raw)[2])["headers"])
    assert headers["x-forwarded-host"] == "named.example:81"
    assert headers["host"] == backend.url.removeprefix("http://")


# --- Host, framing, bodies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /x HTTP/1.1\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n", 413),
        (b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"GET /x\r\n\r\n", 505),  # HTTP/0.9 (llhttp passes it)
        (b"GET /x HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    ],
)
async def test_heads_the_proxy_refuses(
    backend: Backend, make_proxy: MakeProxy, request_bytes: bytes, status: int
):
    app, port = await make_proxy(limits=ListenerLimits(max_body_bytes=1000))
    got, headers, _ = only(await exchange(port, request_bytes))
    assert got == status
    assert headers["connection"] == "close"
    assert backend.seen == []
    assert sum(app.metrics.refused_requests.values()) == 1


async def test_http10_without_host_is_proxied(backend: Backend, make_proxy: MakeProxy):
    _, port = await make_proxy()
    status, _, _ = only(await exchange(port, b"GET /ten HTTP/1.0\r\n\r\n"))
    assert status == 200


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # a bad chunk size
        b"5\r\nabc\r\n0\r\n\r\n",  # a chunk longer than announced
        b"3\r\nabc\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n",  # over the body limit
    ],
)
async def test_a_refused_chunked_body_fails_the_forward_at_once(
    backend: Backend, make_proxy: MakeProxy, body: bytes
):
    app, port = await make_proxy(limits=ListenerLimits(max_body_bytes=1000, idle_timeout=30))
    raw = await exchange(
        port, b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body, within=5
    )
    status, headers, _ = only(raw)
    assert status in (400, 413)
    assert headers["connection"] == "close"
    assert await app.wait_idle(2)
    assert backend.seen == []  # the backend never got a whole request


async def test_a_body_cut_short_releases_everything(backend: Backend, make_proxy: MakeProxy):
    app, port = await make_proxy(limits=ListenerLimits(idle_timeout=30))
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    await asyncio.sleep(0.2)  # the forward is waiting for the rest of the body
    assert app.in_flight == 1
    writer.close()
    assert await app.wait_idle(2)
    assert backend.seen == []
    assert app.listener.connections == set()


async def test_expect_100_continue_only_for_http11(backend: Backend, make_proxy: MakeProxy):
    _, port = await make_proxy()
    eleven = await exchange(
        port,
        b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\nok",
    )
    ten = await exchange(
        port, b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
    )
    assert eleven.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    assert ten.startswith(b"HTTP/1.1 200 ")
    assert b" 100 " not in ten.split(b"\r\n", 1)[0]


async def test_forwarding_headers_append_this_hop(backend: Backend, make_proxy: MakeProxy):
    _, port = await make_proxy()
    raw = await exchange(
        port,
        b"POST /x HTTP/1.1\r\nHost: public.example\r\nX-Forwarded-For: 10.9.9.9\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: spoofed.example\r\n"
        b"Forwarded: for=10.9.9.9;proto=https\r\nForwarded: for=10.8.8.8\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n",
    )
    seen = json.loads(only(raw)[2])["headers"]
    headers = dict(seen)
    assert headers["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "https, http"
    assert headers["x-forwarded-host"] == "spoofed.example, public.example"
    assert headers["forwarded"] == (
        "for=10.9.9.9;proto=https, for=10.8.8.8, for=127.0.0.1;host=public.example;proto=http"
    )
    for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"):
        assert [n for n, _ in seen].count(name) == 1


# --- flow control -----------------------------------------------------------------------------


async def test_pipelined_hits_stop_while_the_client_does_not_read(
    backend: Backend, make_proxy: MakeProxy
):
    app, port = await make_proxy(limits=ListenerLimits(write_timeout=0.5, idle_timeout=30))
    first = await exchange(port, b"GET /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert len(only(first)[2]) == BIG  # now cached
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n" * 2000)
    await writer.drain()
    await asyncio.sleep(0.3)
    hits = app.metrics.count("GET", 200, "hit")
    # The socket buffers hold a few answers; the proxy wrote no more than its high-water mark.
    assert hits < 40
    for _ in range(200):  # the write timeout (0.5 s) aborts it; bounded at 10 s
        if not app.listener.connections:
            break
        await asyncio.sleep(0.05)
    assert app.listener.connections == set()
    writer.close()
    assert app.metrics.count("GET", 200, "hit") < 40


# --- tracing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("allowed", [False, True])
async def test_a_client_sampled_traceparent_makes_a_hit_span_only_when_configured(
    backend: Backend, make_proxy: MakeProxy, allowed: bool
):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sampled = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    try:
        _, port = await make_proxy(
            tracer=provider.get_tracer("test"), trace_client_sampled_hits=allowed
        )
        get = b"GET /t HTTP/1.1\r\nHost: h\r\n%sConnection: close\r\n\r\n"
        assert only(await exchange(port, get % b""))[0] == 200  # the miss: always a span
        for header in (sampled, sampled.replace(b"-01\r", b"-1\r"), b"traceparent: -01\r\n"):
            assert only(await exchange(port, get % header))[0] == 200  # hits
        outcomes = [
            (s.attributes or {}).get("tokencache.outcome") for s in exporter.get_finished_spans()
        ]
    finally:
        provider.shutdown()
    assert outcomes == (["miss", "hit"] if allowed else ["miss"])


async def test_a_half_closed_client_gets_every_answer_then_the_connection_closes(
    backend: Backend, make_proxy: MakeProxy
):
    _, port = await make_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n" * 2 + b"POST /b HTTP/1.1\r\nHost: h\r\n")
        writer.write(b"Content-Length: 2\r\n\r\nok" + b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n")
        writer.write_eof()
        async with asyncio.timeout(10):
            raw = await reader.read(-1)  # until the proxy closes
    finally:
        writer.close()
    got = responses(raw)
    assert [status for status, _, _ in got] == [200, 200, 200, 200]
    assert [json.loads(body)["target"] for _, _, body in got] == ["/a", "/a", "/b", "/c"]


# --- the one boundary for handler exceptions ----------------------------------------------------


class _Broken:
    """A handler with a bug: the hit path raises for /fast, the slow path for everything else."""

    def serve_fast(self, conn: Any, req: Any) -> bool:
        if req.target == "/fast":
            raise KeyError("bug in the hit path")
        return False

    def serve_express(self, conn: Any, head: Any) -> bool:
        if head.target == "/express":
            raise KeyError("bug in the express path")
        return False

    async def serve(self, conn: Any, req: Any) -> None:
        raise RuntimeError("bug in the slow path, secret=s3cr3t")


async def test_handler_exceptions_end_at_one_boundary(caplog: pytest.LogCaptureFixture):
    from tokencache.proxy._http_server import Listener

    metrics = ProxyMetrics()
    listener = Listener(_Broken(), ListenerLimits(), logging.getLogger("test.boundary"), metrics)
    _, port = await listener.start("127.0.0.1", 0)
    try:
        with caplog.at_level(logging.INFO, logger="test.boundary"):
            # The second /express is a repeat of a remembered head: it reaches serve_express.
            for path in (b"/fast", b"/slow", b"/slow", b"/fast", b"/express", b"/express"):
                raw = await exchange(port, b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
                status, headers, _ = only(raw)
                assert (status, headers["connection"]) == (500, "close")
    finally:
        await listener.close()
    assert metrics.internal_errors == 6
    lines = [r for r in caplog.records if r.name == "test.boundary"]
    assert len(lines) == 1  # rate-limited: one line per interval, the rest counted
    assert lines[0].exc_info is None  # no traceback
    assert "s3cr3t" not in lines[0].getMessage() + repr(lines[0].__dict__)
