"""Black-box: hostile clients of the peer port of a real `tokencache-proxy` process (issue 9).

A client that holds the peer secret (a peer gone wrong, or anyone when no secret is set) and
sends requests but never reads the answers; one that asks for thousands of distinct keys at
once; and one without the secret that opens connections and never finishes a handshake. Each
must cost the process a bounded amount of memory and file descriptors, and the process must keep
answering. Every process is started by a context manager and stopped by PID; every wait is
bounded.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import peer_wire as pw
from tests.support.chaos_load import rss_kib
from tests.support.net import free_port
from tests.support.proxy_cluster import PEER_SECRET, http_get, wait_until
from tests.test_proxy_e2e_hostile import READ_BOUND, Stack, metric, stack


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("hostile-peer")) as s:
        yield s


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def busy(s: Stack) -> float:
    return metric(s.proxy, 'tokencache_peer_requests_refused_total{reason="busy"}')


def test_a_peer_that_never_reads_its_answers_costs_bounded_memory(shared: Stack):
    target = b"/peer-big?size=262144"
    status, body, _ = http_get(shared.proxy.url + target.decode())
    assert status == 200 and len(body) == 262144  # cached now, under "GET <target>"
    pid = shared.proxy.pid
    before = peak = rss_kib(pid)
    with pw.WireClient(shared.proxy.peer_port, PEER_SECRET.encode(), timeout=READ_BOUND) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.handshake()
        payload = pw.get_payload("path", b"GET " + target)
        c.sock.settimeout(0.5)
        sent = 0
        deadline = time.monotonic() + 8.0
        # 3000 hits of 256 KiB: before the fix every answer was buffered (~750 MiB).
        frames = b"".join(c.frame(pw.GET, rid, payload) for rid in range(1, 3001))
        while sent < len(frames) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):  # the proxy stopped reading: the point
                sent += c.sock.send(frames[sent : sent + 65536])
            peak = max(peak, rss_kib(pid))
        for _ in range(20):
            peak = max(peak, rss_kib(pid))
            time.sleep(0.1)
    growth_mib = (peak - before) / 1024
    print(f"{sent // (len(frames) // 3000)} peer GETs of 256 KiB unread: RSS +{growth_mib:.1f} MiB")
    assert sent >= len(frames) // 3  # the client did send a thousand requests or more
    assert growth_mib < 48, f"RSS grew {growth_mib:.1f} MiB"
    assert http_get(shared.proxy.url + "/after-peer")[0] == 200  # and the process lives


def test_thousands_of_distinct_keys_at_once_are_bounded_and_the_rest_declined(shared: Stack):
    pid = shared.proxy.pid
    ready = shared.proxy.health_url + "/ready"
    before = peak = rss_kib(pid)
    declined_before = busy(shared)
    n = 10_000
    worst = 0.0
    with pw.WireClient(shared.proxy.peer_port, PEER_SECRET.encode(), timeout=READ_BOUND) as c:
        c.handshake()
        frames = [
            c.frame(pw.GET, rid, pw.get_payload("path", b"GET /distinct?delay=3&i=%d" % rid))
            for rid in range(1, n + 1)
        ]
        c.send(b"".join(frames))
        answers: dict[int, tuple[int, bytes]] = {}
        deadline = time.monotonic() + 30.0
        while len(answers) < n and time.monotonic() < deadline:
            kind, rid, payload = c.read_frame()
            if kind != pw.HEARTBEAT:
                answers[rid] = (kind, payload)
            if len(answers) % 1000 == 0:
                peak = max(peak, rss_kib(pid))
                started = time.monotonic()
                with urllib.request.urlopen(ready, timeout=READ_BOUND) as resp:
                    assert resp.status == 200
                worst = max(worst, time.monotonic() - started)
    declined = sum(1 for kind, p in answers.values() if kind == pw.ERROR and p[0] == 2)
    values = sum(1 for kind, _ in answers.values() if kind == pw.VALUE)
    growth_mib = (peak - before) / 1024
    print(
        f"{n} distinct keys at once: {values} loaded, {declined} declined, "
        f"RSS +{growth_mib:.1f} MiB, slowest /ready {worst:.2f}s"
    )
    assert len(answers) == n  # every request got its answer
    assert values + declined == n
    assert 0 < values <= 512  # at most max_loads_per_connection ran
    assert busy(shared) - declined_before == declined
    assert growth_mib < 64, f"RSS grew {growth_mib:.1f} MiB"
    assert worst < 5.0  # (before the bound: no answer for minutes)


def test_connections_that_never_finish_a_handshake_are_capped(shared: Stack):
    pid = shared.proxy.pid
    base = fds(pid)
    declined_before = busy(shared)
    socks: list[socket.socket] = []
    try:
        for _ in range(1300):  # the cap is 1024 (PeerServer.max_handshaking)
            sock = socket.socket()
            sock.settimeout(READ_BOUND)
            sock.connect(("127.0.0.1", shared.proxy.peer_port))
            sock.send(b"TK")  # the first bytes of a hello, and nothing more
            socks.append(sock)

        most = [0]

        def settled() -> bool:
            # Every connection over the cap is refused once accepted; on a loaded machine the
            # first ones may reach their handshake deadline (10 s) before the last is accepted,
            # so the count of refusals is 276 only when the accepts keep up: wait for it, but
            # what must hold is the bound on descriptors, at every moment.
            most[0] = max(most[0], fds(pid) - base)
            return busy(shared) - declined_before >= 1300 - 1024

        with contextlib.suppress(TimeoutError):
            wait_until(settled, 20.0, "connections over the cap refused")
        refused = busy(shared) - declined_before
        print(f"1300 unfinished handshakes: {refused} refused, at most {most[0]} more descriptors")
        assert refused >= 1
        assert most[0] <= 1024 + 16
        # A real peer is not locked out for long: the stalled ones go at the handshake timeout.
        for sock in socks:
            sock.close()
        socks.clear()

        def handshake_ok() -> bool:
            with (
                contextlib.suppress(pw.WireError, OSError),
                pw.WireClient(shared.proxy.peer_port, PEER_SECRET.encode(), timeout=2.0) as c,
            ):
                c.handshake()
                return c.request(pw.PING, 1, b"")[0] == pw.OK
            return False

        wait_until(handshake_ok, 15.0, "a real peer's handshake")
    finally:
        for sock in socks:
            sock.close()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of listening TCP sockets on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def test_without_a_peer_secret_the_peer_port_listens_on_loopback_only(tmp_path: Path):
    # Static discovery with this process as its only peer is allowed without a secret; the
    # unauthenticated port then took a PUT from anyone who reached GROUPCACHE_PORT (":port":
    # every interface) and served the planted response to every client as a hit.
    port = free_port()
    env = {
        "GROUPCACHE_PEER_SECRET": "",
        "GROUPCACHE_PORT": f":{port}",
        "GROUPCACHE_PEERS": f"http://127.0.0.1:{port}",
        "GROUPCACHE_SELF_URL": f"http://127.0.0.1:{port}",
    }
    with stack(tmp_path, **env) as s:
        assert http_get(s.proxy.url + "/alone")[0] == 200
        addresses = listening_addresses(port)
        print(f"peer port {port} without a secret listens on {sorted(addresses)}")
        assert addresses == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
        assert "Traceback" not in s.proxy.log_text()
