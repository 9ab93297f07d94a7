"""MAX_CLIENT_CONNECTIONS on a real proxy: a client cannot hold every file descriptor. At the cap
an idle keep-alive connection makes room for a new one; when none is idle the new connection is
closed at once and counted, and the connections already open keep being served."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.support.proxy_cluster import BackendProcess, ProxyCluster

pytestmark = pytest.mark.slow
CAP = 4
READ_BOUND = 10.0


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_BOUND)
    return sock


def _get(sock: socket.socket, path: str) -> bytes:
    """One request on a kept-alive connection; the whole answer (Content-Length framed)."""
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    return _answer(sock)


def _answer(sock: socket.socket) -> bytes:
    data = b""
    for _ in range(1000):  # bounded: an answer is a few reads
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            fields = (line.partition(b":") for line in head.split(b"\r\n")[1:])
            length = next((int(v) for k, _, v in fields if k.lower() == b"content-length"), 0)
            if len(body) >= length:
                return data
    return data


def _refused(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=READ_BOUND).text
    for line in text.splitlines():
        if line.startswith('proxy_refused_requests_total{reason="connections"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_connection_cap_closes_idle_ones_first_then_refuses(tmp_path: Path) -> None:
    with (
        BackendProcess(tmp_path) as backend,
        ProxyCluster(1, backend.url, tmp_path, env={"MAX_CLIENT_CONNECTIONS": str(CAP)}) as c,
    ):
        node = c.nodes[0]
        port = int(node.url.rsplit(":", 1)[1])
        # CAP idle keep-alive connections (each answered once): a new one still gets in.
        idle = [_connect(port) for _ in range(CAP)]
        for sock in idle:
            assert _get(sock, "/cap/idle").startswith(b"HTTP/1.1 200")
        fresh = _connect(port)
        assert _get(fresh, "/cap/fresh").startswith(b"HTTP/1.1 200")
        fresh.close()
        for sock in idle:
            sock.close()
        # CAP connections in the middle of a request head are not idle: the next is refused.
        busy = [_connect(port) for _ in range(CAP)]
        try:
            for sock in busy:
                sock.sendall(b"GET /cap/slow HTTP/1.1\r\nHost: x\r\n")
                assert _wait_listed(node.metrics_url)
            before = _refused(node.metrics_url)
            extra = _connect(port)
            extra.settimeout(READ_BOUND)
            assert extra.recv(1024) == b""  # closed at once, nothing answered
            extra.close()
            assert _refused(node.metrics_url) == before + 1
            # The connections already open are still served.
            busy[0].sendall(b"\r\n")
            assert _answer(busy[0]).startswith(b"HTTP/1.1 200")
        finally:
            for sock in busy:
                sock.close()
        assert httpx.get(node.url + "/cap/after", timeout=READ_BOUND).status_code == 200


def _wait_listed(metrics_url: str) -> bool:
    # The metrics listener is another port: it is not subject to the public cap.
    return httpx.get(metrics_url, timeout=READ_BOUND).status_code == 200
