"""Black-box: hostile clients against real `tokencache-proxy` processes on loopback (issue 9).

The proxy holds an OAuth2 bearer token (from a stand-in token endpoint, a raw recording listener)
for the backend (tests/support/demo_backend.py). Another raw recording listener plays "any other
host": whatever a client sends, it must never receive a byte. Every process is started by a
context manager and stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import peer_wire as pw
from tests.support.chaos_load import rss_kib
from tests.support.proxy_cluster import (
    PEER_SECRET,
    BackendProcess,
    ProxyCluster,
    ProxyNode,
    http_get,
    wait_until,
)
from tests.support.raw_listener import RawListener

TOKEN = "tok-9f2c1e-never-leaves-for-anyone-but-the-backend"
TOKEN_JSON = json.dumps({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})
CLIENT_SECRET = "client-secret-never-logged"
READ_BOUND = 10.0


@dataclass
class Stack:
    backend: BackendProcess
    other: RawListener
    token: RawListener
    proxy: ProxyNode
    cluster: ProxyCluster


@contextlib.contextmanager
def stack(work: Path, **env: str) -> Iterator[Stack]:
    with (
        BackendProcess(work) as backend,
        RawListener(work, "other") as other,
        RawListener(work, "token", TOKEN_JSON) as token,
    ):
        settings = {
            "OAUTH2_TOKEN_URL": f"http://127.0.0.1:{token.port}/token",
            "OAUTH2_CLIENT_ID": "proxy",
            "OAUTH2_CLIENT_SECRET": CLIENT_SECRET,
            **env,
        }
        with ProxyCluster(1, backend.url, work, env=settings) as cluster:
            yield Stack(backend, other, token, cluster.nodes[0], cluster)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("hostile")
    with stack(work, WRITE_TIMEOUT="2s", MAX_REQUEST_BODY_BYTES="100000") as s:
        yield s


def connect(node: ProxyNode) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=READ_BOUND)
    return sock


def exchange(node: ProxyNode, data: bytes) -> bytes:
    """Send `data`; read until the proxy closes (bounded)."""
    with connect(node) as sock:
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + READ_BOUND
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def status_of(raw: bytes) -> int:
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert m, raw[:200]
    return int(m.group(1))


def metric(node: ProxyNode, name: str) -> float:
    status, body, _ = http_get(node.metrics_url)
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- SSRF / token exfiltration ----------------------------------------------------------------


def test_ssrf_attempts_reach_no_other_listener_and_the_token_only_the_backend(shared: Stack):
    other = f"127.0.0.1:{shared.other.port}".encode()
    attempts = {
        b"CONNECT x:@%s/steal HTTP/1.1\r\nHost: h\r\n\r\n" % other: 405,
        b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (other, other): 405,
        b"GET x:@%s/steal HTTP/1.1\r\nHost: h\r\n\r\n" % other: 400,
        b"GET @%s/steal HTTP/1.1\r\nHost: h\r\n\r\n" % other: 400,
        b"GET http://x:@%s/steal HTTP/1.1\r\nHost: h\r\n\r\n" % other: 400,
        b"GET http://%s/steal?abs=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % other: 200,
        b"GET //%s/steal HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % other: 200,
        b"POST /%s/steal HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n" % (other, other): 200,
        b"TRACE / HTTP/1.1\r\nHost: h\r\n\r\n": 405,
    }
    for request, expected in attempts.items():
        raw = exchange(shared.proxy, request)
        assert status_of(raw) == expected, request
        assert TOKEN.encode() not in raw
    # A legitimate request proves the token is in play: the backend sees it.
    raw = exchange(shared.proxy, b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 200
    echoed = dict(json.loads(raw.partition(b"\r\n\r\n")[2])["headers"])
    assert echoed["Authorization"] == f"Bearer {TOKEN}"
    time.sleep(0.2)
    assert shared.other.records() == []  # not one connection, not one byte
    token_requests = shared.token.records()
    assert len(token_requests) == 1 and token_requests[0].startswith(b"POST /token ")
    by_target = shared.backend.stats()["by_target"]
    assert "/steal?abs=1" in by_target
    # "//host/steal" and "/host/steal" arrived as paths on the backend (aiohttp's path_qs shows
    # the former with extra slashes): the backend got every proxied attempt, nobody else did.
    assert sum(t.endswith(f"/{other.decode()}/steal") for t in by_target) == 2
    log = shared.proxy.log_text()
    assert TOKEN not in log and CLIENT_SECRET not in log
    assert "Traceback" not in log


# --- flow control ---------------------------------------------------------------------------


def test_pipelining_without_reading_keeps_rss_bounded_and_is_closed_by_the_write_timeout(
    shared: Stack,
):
    target = b"/big?size=262144"
    raw = exchange(
        shared.proxy, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % target
    )
    assert status_of(raw) == 200 and len(raw) > 262144  # cached now
    before = rss_kib(shared.proxy.pid)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", shared.proxy.port))
    sock.settimeout(0.5)
    request = b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target
    payload = request * 6000
    sent = 0
    peak = before
    deadline = time.monotonic() + 8.0
    with sock:
        while sent < len(payload) and time.monotonic() < deadline:
            try:
                sent += sock.send(payload[sent : sent + 65536])
            except TimeoutError:
                peak = max(peak, rss_kib(shared.proxy.pid))  # the proxy stopped reading: fine
            except (ConnectionResetError, BrokenPipeError):
                break
        for _ in range(10):
            peak = max(peak, rss_kib(shared.proxy.pid))
            time.sleep(0.1)

        def aborted() -> bool:
            # tcpi_state, the first byte of TCP_INFO: 7 is TCP_CLOSE (the proxy's RST arrived).
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == 7

        # WRITE_TIMEOUT is 2 s; the proxy aborts (RST), so the unread answers are dropped.
        wait_until(aborted, 15.0, "connection aborted by the write timeout")
    growth_mib = (peak - before) / 1024
    print(f"pipelined {sent // len(request)} GETs of 256 KiB unread: RSS +{growth_mib:.1f} MiB")
    assert growth_mib < 32, f"RSS grew {growth_mib:.1f} MiB"
    assert sent >= len(request) * 100  # the client did pipeline thousands of requests' worth
    assert http_get(shared.proxy.url + "/after")[0] == 200  # and the process lives


# --- bodies and heads -------------------------------------------------------------------------


def test_request_rules_on_a_real_process(shared: Stack):
    node = shared.proxy
    cases = [
        (b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100001\r\n\r\n", 413),
        (
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"ffff\r\n"
            + b"x" * 0xFFFF
            + b"\r\n"
            + b"ffff\r\n"
            + b"x" * 0xFFFF
            + b"\r\n0\r\n\r\n",
            413,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (b"GET /echo HTTP/1.1\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 200),
        # llhttp passes these two versions; h11 refuses both (they were served, hits included).
        (b"GET /echo\r\n\r\n", 505),  # HTTP/0.9: a request line without a version
        (b"GET /echo HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    ]
    for request, expected in cases:
        assert status_of(exchange(node, request)) == expected, request[:80]
    ten = exchange(
        node, b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
    )
    assert status_of(ten) == 200
    raw = exchange(
        node,
        b"GET /echo?fwd=1 HTTP/1.1\r\nHost: pub.example\r\nX-Forwarded-For: 10.1.1.1\r\n"
        b"Forwarded: for=10.1.1.1\r\nCookie: c=1\r\nConnection: close\r\n\r\n",
    )
    echoed = dict(json.loads(raw.partition(b"\r\n\r\n")[2])["headers"])
    assert echoed["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"
    assert echoed["Forwarded"] == "for=10.1.1.1, for=127.0.0.1;host=pub.example;proto=http"
    assert metric(node, "proxy_refused_requests_total") >= 5
    assert metric(node, "proxy_internal_errors_total") == 0
    assert "Traceback" not in node.log_text()


def test_forty_bad_bodies_then_sigterm_exits_promptly(tmp_path: Path):
    bad = [
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nabc",
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nshort",
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ]
    with stack(tmp_path, SHUTDOWN_TIMEOUT="20s") as s:
        socks = []
        try:
            for i in range(40):
                sock = connect(s.proxy)
                sock.sendall(bad[i % len(bad)])
                socks.append(sock)
            time.sleep(0.5)
            assert s.proxy.proc is not None
            started = time.monotonic()
            s.proxy.proc.send_signal(signal.SIGTERM)
            code = s.proxy.proc.wait(timeout=25)
            took = time.monotonic() - started
            for sock in socks:  # every connection was closed by the proxy
                sock.settimeout(READ_BOUND)
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(65536):
                        pass
        finally:
            for sock in socks:
                sock.close()
        log = s.proxy.log_text()
    print(f"40 bad bodies, then SIGTERM: exit {code} after {took:.2f}s")
    assert code == 0, log
    assert took < 10.0, f"SIGTERM took {took:.1f}s"  # SHUTDOWN_TIMEOUT is 20 s
    assert "Traceback" not in log


# --- the loader's key validation through the peer port -----------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        b"DELETE /users/1",
        b"GET /x\nhost: internal-admin",
        b"GET /x\r\nx-evil: 1",
        b"GET x:@127.0.0.1:1/steal",
        b"GET /x\naccept: a\x00b",
    ],
)
def test_hostile_keys_on_the_peer_port_are_bad_requests(shared: Stack, key: bytes):
    before = shared.backend.stats()["requests"]
    refused = metric(shared.proxy, 'proxy_refused_requests_total{reason="key"}')
    # A peer that holds the secret (or a forged one) asks for a key the proxy could not have
    # made; GROUPCACHE_GROUP_NAME defaults to kubecache's "path".
    with pw.WireClient(shared.proxy.peer_port, PEER_SECRET.encode(), timeout=READ_BOUND) as c:
        c.handshake()
        kind, answer = c.request(pw.GET, 1, pw.get_payload("path", key))
        assert kind == pw.ERROR and answer[0] == pw.ERR_BAD_REQUEST
        kind, _ = c.request(pw.PING, 2, b"")  # the connection and the peer stay usable
        assert kind == pw.OK
    assert shared.backend.stats()["requests"] == before
    assert metric(shared.proxy, 'proxy_refused_requests_total{reason="key"}') == refused + 1


def test_slow_request_bodies_hold_no_backend_connection(shared: Stack):
    # 520 clients each send a head announcing a body and 10 bytes of it, then nothing (within
    # the idle timeout they may go on like this for ever). Before the body was buffered first,
    # each held one of the 512 backend connections and every other miss got a 504.
    socks: list[socket.socket] = []
    try:
        for i in range(520):
            sock = connect(shared.proxy)
            sock.sendall(
                b"POST /echo?slow=%d HTTP/1.1\r\nHost: h\r\nContent-Length: 50000\r\n\r\n" % i
                + b"x" * 10
            )
            socks.append(sock)
        time.sleep(1.0)
        started = time.monotonic()
        status, body, _ = http_get(shared.proxy.url + f"/victim-{time.time_ns()}", timeout=30.0)
        took = time.monotonic() - started
        print(f"520 slow bodies held: a miss answered {status} in {took:.2f}s")
        assert status == 200, body
        assert took < 8.0  # BACKEND_TIMEOUT is 10 s
    finally:
        for sock in socks:
            sock.close()
