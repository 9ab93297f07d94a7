"""Scenario 5: bad input to a real peer port and a real proxy public port (hypothesis, bounded).

Figures per run: inputs tried, 500s and crashes (target 0), RSS growth of the server process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.chaos_fuzz import fuzz_raw, slowloris
from tests.support.chaos_peer_fuzz import fuzz_peer
from tests.support.net import free_port
from tests.support.proxy_cluster import (
    PEER_SECRET,
    REPO,
    BackendProcess,
    ProxyCluster,
    base_env,
    http_get,
    wait_until,
)

pytestmark = pytest.mark.slow

EXAMPLES = 150
RSS_GROWTH_LIMIT_KIB = 48 << 10


@dataclass
class Peer:
    """An engine peer process whose output goes to a file (a pipe nobody reads would fill up)."""

    popen: subprocess.Popen[bytes]
    port: int
    control: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@pytest.fixture(scope="module")
def engine_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    port, control = free_port(), free_port()
    log = tmp_path_factory.mktemp("fuzz-peer") / "peer.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.support.engine_peer", "--port", str(port)),
                *("--control-port", str(control), "--secret", "fuzz-peer-secret"),
                *("--peers", f"http://127.0.0.1:{port}"),
            ],
            cwd=REPO,
            env=base_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    peer = Peer(popen, port, control, log)
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{control}/stats"), 20.0, "engine peer")
        yield peer
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return http_get(url, timeout=1.0)[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyCluster]:
    work = tmp_path_factory.mktemp("fuzz-proxy")
    with BackendProcess(work) as backend, ProxyCluster(2, backend.url, work) as cluster:
        yield cluster


def test_peer_port_survives_fuzzing(engine_peer: Peer) -> None:
    proc, port, control = engine_peer, engine_peer.port, engine_peer.control
    result = fuzz_peer(port, proc.pid, b"fuzz-peer-secret", examples=EXAMPLES)
    assert proc.alive()
    assert result.tried == EXAMPLES
    # Without a session key nothing is ever served: every input was refused.
    assert result.served == [], result.served[:3]
    assert result.slow == [], result.slow[:3]
    assert result.rss_after_kib - result.rss_before_kib < RSS_GROWTH_LIMIT_KIB
    assert http_get(f"http://127.0.0.1:{control}/stats")[0] == 200
    assert "Traceback" not in engine_peer.log.read_text(errors="replace")


def test_proxy_public_port_survives_fuzzing(proxy: ProxyCluster) -> None:
    node = proxy.nodes[0]
    result = fuzz_raw(node.port, node.pid, examples=EXAMPLES, peer=False)
    assert node.proc is not None and node.proc.poll() is None, node.log_text()[-3000:]
    assert result.tried == EXAMPLES
    assert result.server_errors == [], result.server_errors[:3]
    assert result.rss_after_kib - result.rss_before_kib < RSS_GROWTH_LIMIT_KIB
    assert http_get(node.url + "/after-fuzz")[0] == 200


def test_proxy_peer_port_survives_fuzzing(proxy: ProxyCluster) -> None:
    node = proxy.nodes[1]
    result = fuzz_peer(node.peer_port, node.pid, PEER_SECRET.encode(), examples=EXAMPLES // 2)
    assert node.proc is not None and node.proc.poll() is None
    assert result.served == [], result.served[:3]
    assert "Traceback" not in node.log_text()


def test_slowloris_does_not_starve_the_proxy(proxy: ProxyCluster) -> None:
    node = proxy.nodes[0]
    status, closed, _ = slowloris(
        node.port,
        connections=40,
        close_within=20.0,  # the proxy's header timeout is 10 s
        normal=lambda: http_get(node.url + "/during-slowloris", timeout=10)[0],
    )
    assert status == 200
    assert closed == 40
    assert node.proc is not None and node.proc.poll() is None


def test_fuzzed_server_still_stops_cleanly(engine_peer: Peer) -> None:
    proc = engine_peer
    assert proc.alive()
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(timeout=15) == 0
