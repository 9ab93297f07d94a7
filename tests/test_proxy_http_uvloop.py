"""The listener under uvloop, the loop it runs on in production: a real proxy process (ProxyApp on
uvloop) in front of a real aiohttp backend, spoken to over raw sockets. uvloop's transports differ
from asyncio's in small ways (no Transport subclassing, flow-control timing), so the wire-level
behaviours are checked here again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.test_proxy_http import closed_by_peer, read_response

pytestmark = pytest.mark.slow

_RUNNER = r"""
import asyncio, json, signal, sys
import uvloop
import tokencache
from tokencache.proxy._app import ProxyApp
from tokencache.proxy._http_request import ListenerLimits
from tokencache.proxy._metrics import ProxyMetrics

async def main():
    backend, limits = sys.argv[1], json.loads(sys.argv[2])
    ws = tokencache.Workspace()
    app = ProxyApp(
        backend_url=backend, backend_timeout=5.0, cache_ttl=300.0, cache_error_ttl=60.0,
        restrict_methods=["GET", "HEAD"], route_regexp=None, max_body_bytes=1 << 20,
        stale_if_error=0.0, workspace=ws, group_bytes=1 << 24, metrics=ProxyMetrics(),
        limits=ListenerLimits(**limits),
    )
    host, port = await app.start("127.0.0.1", 0)
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await app.close()
    await ws.close()

uvloop.run(main())
"""


@pytest.fixture
async def backend_url() -> AsyncIterator[str]:
    counts: dict[str, int] = {}

    async def count(request: web.Request) -> web.Response:
        counts[request.path] = counts.get(request.path, 0) + 1
        body = await request.read()
        return web.Response(text=f"{request.method} {request.path} {counts[request.path]} {body!r}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", count)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
def proxy_url(backend_url: str) -> Iterator[str]:
    root = Path(__file__).resolve().parent.parent
    limits = json.dumps({"header_timeout": 0.3, "idle_timeout": 30.0})
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, backend_url, limits],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = b""
        while not line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read() if proc.stderr else b""
        yield f"127.0.0.1:{int(line)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.split(":")
    return await asyncio.open_connection(host, int(port))


async def test_miss_hit_and_pipelining_under_uvloop(proxy_url: str):
    reader, writer = await _connect(proxy_url)
    try:
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        miss = await read_response(reader)
        writer.write(
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        b_miss = await read_response(reader)
        a_hit = await read_response(reader)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert miss[2] == b"GET /a 1 b''"
    assert miss[1]["cache-status"] == "tokencache; fwd=miss; stored"
    assert b_miss[2] == b"GET /b 1 b''"
    assert a_hit[2] == b"GET /a 1 b''"
    assert a_hit[1]["cache-status"].startswith("tokencache; hit; ttl=")
    assert b"Content-Length: 12\r\n" in head and b"tokencache; hit" in head


async def test_chunked_post_under_uvloop(proxy_url: str):
    reader, writer = await _connect(proxy_url)
    try:
        writer.write(
            b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        await writer.drain()
        writer.write(b"2\r\nde\r\n0\r\n\r\n")
        status, headers, body = await read_response(reader)
    finally:
        writer.close()
    assert status == 200
    assert body == b"POST /p 1 b'abcde'"
    assert headers["cache-status"] == "tokencache; fwd=method; detail=method"


async def test_limits_under_uvloop(proxy_url: str):
    reader, writer = await _connect(proxy_url)
    try:
        writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert await closed_by_peer(reader)
    finally:
        writer.close()
    assert status == 431
    slow_reader, slow_writer = await _connect(proxy_url)
    try:
        slow_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert await closed_by_peer(slow_reader)
    finally:
        slow_writer.close()
