"""PROXY_WORKERS as an operator runs it: real supervisor and worker processes on loopback.

Each pod (node) is a supervisor with N workers sharing one public port (SO_REUSEPORT), each worker
a peer of the ring on GROUPCACHE_PORT + i. These tests check the promises of docs/workers.md from
outside: one backend request per key across workers and pods, one scrape target per pod with
every worker's metrics, a killed worker restarted, SIGTERM draining every worker with exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port, free_port_range
from tests.support.proxy_cluster import (
    PEER_SECRET,
    BackendProcess,
    ProxyNode,
    base_env,
    http_get,
    wait_until,
)

WORKERS = 2
DEADLINE = 30.0


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (read from /proc; bounded by the process table)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the ppid follows the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def make_nodes(size: int, backend_url: str, workdir: Path) -> list[ProxyNode]:
    bases = [free_port_range(WORKERS) for _ in range(size)]
    peers = ",".join(f"http://127.0.0.1:{b}" for b in bases)
    nodes = []
    for i, base in enumerate(bases):
        port, health, metrics = free_port(), free_port(), free_port()
        env = base_env(
            {
                "BACKEND_URL": backend_url,
                "LISTEN_ADDR": f"127.0.0.1:{port}",
                "GROUPCACHE_PORT": f"127.0.0.1:{base}",
                "HEALTH_ADDR": f"127.0.0.1:{health}",
                "METRICS_ADDR": f"127.0.0.1:{metrics}",
                "GROUPCACHE_PEER_SECRET": PEER_SECRET,
                "BACKEND_TIMEOUT": "10s",
                "SHUTDOWN_TIMEOUT": "5s",
                "TRACE": "false",
                "PROXY_WORKERS": str(WORKERS),
            }
        )
        if size > 1:
            env["GROUPCACHE_PEERS"] = peers
        nodes.append(ProxyNode(i, port, base, health, metrics, workdir / f"proxy-{i}.log", env))
    return nodes


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[BackendProcess]:
    with BackendProcess(tmp_path) as b:
        yield b


def start(nodes: list[ProxyNode]) -> None:
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
    except BaseException:
        stop(nodes)
        raise


def stop(nodes: list[ProxyNode]) -> list[int]:
    return [node.stop() for node in nodes]


async def herd(urls: list[str], count: int) -> list[bytes]:
    """``count`` concurrent GETs spread over ``urls``, each on a new connection."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=20.0) as client:

        async def one(i: int) -> bytes:
            resp = await client.get(urls[i % len(urls)])
            assert resp.status_code == 200
            return resp.content

        async with asyncio.timeout(DEADLINE):
            return await asyncio.gather(*(one(i) for i in range(count)))


def metric_values(node: ProxyNode, name: str) -> dict[str, float]:
    """``{labels text: value}`` of every sample called ``name`` on the pod's scrape."""
    status, body, _ = http_get(node.metrics_url)
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name) :]] = float(value)
    return out


def test_a_herd_is_one_backend_request_across_workers_and_pods(
    backend: BackendProcess, tmp_path: Path
) -> None:
    nodes = make_nodes(2, backend.url, tmp_path)
    start(nodes)
    try:
        for node in nodes:
            assert len(children_of(node.pid)) == WORKERS
        urls = [f"{n.url}/herd?delay=1" for n in nodes]
        bodies = asyncio.run(herd(urls, 60))
        assert len(set(bodies)) == 1
        assert backend.stats()["requests"] == 1
        # Keys spread over the ring of 4 workers: each loaded once for the whole cluster.
        keys = [f"/k{i}" for i in range(40)]
        asyncio.run(herd([n.url + k for n in nodes for k in keys], 160))
        assert backend.stats()["requests"] == 1 + len(keys)
        # One scrape target per pod, every worker's samples labelled.
        served = metric_values(nodes[0], "http_server_requests_seconds_count")
        workers = {label.split('worker="')[1].split('"')[0] for label in served}
        assert workers == {"0", "1"}
        assert metric_values(nodes[0], "proxy_workers") == {"": 2.0}
    finally:
        assert stop(nodes) == [0, 0]


def test_one_pod_alone_shares_its_cache_between_its_workers(
    backend: BackendProcess, tmp_path: Path
) -> None:
    nodes = make_nodes(1, backend.url, tmp_path)
    start(nodes)
    try:
        asyncio.run(herd([f"{nodes[0].url}/solo?delay=1"], 40))
        for i in range(20):
            asyncio.run(herd([f"{nodes[0].url}/s{i}"], 4))
        assert backend.stats()["requests"] == 21
    finally:
        assert stop(nodes) == [0]


def test_a_killed_worker_is_restarted_and_sigterm_drains_them_all(
    backend: BackendProcess, tmp_path: Path
) -> None:
    nodes = make_nodes(1, backend.url, tmp_path)
    node = nodes[0]
    start(nodes)
    try:
        first = children_of(node.pid)
        assert len(first) == WORKERS
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: (
                len(children_of(node.pid) - first) == 1
                and metric_values(node, "proxy_worker_up")
                == {'{worker="0"}': 1.0, '{worker="1"}': 1.0}
                # and both rings hold both workers again (the survivor's health checks may have
                # taken the dead one off its ring: until it is back the rings disagree)
                and sorted(metric_values(node, "tokencache_ring_peers").values()) == [2.0, 2.0]
            ),
            DEADLINE,
            "a new worker replaced the killed one and both rings hold both",
        )
        restarts = metric_values(node, "proxy_worker_restarts_total")
        assert sum(restarts.values()) == 1
        asyncio.run(herd([f"{node.url}/after?delay=0.2"], 20))
        assert backend.stats()["requests"] == 1
        workers = children_of(node.pid)
        assert node.stop(signal.SIGTERM) == 0
        assert not any(alive(pid) for pid in workers)
    finally:
        stop(nodes)


def test_a_worker_that_cannot_start_stops_the_pod(backend: BackendProcess, tmp_path: Path) -> None:
    nodes = make_nodes(1, backend.url, tmp_path)
    node = nodes[0]
    # The second worker's peer port is taken by someone else: the pod cannot run as configured.
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.peer_port + 1))
        squatter.listen()
        node.start()
        assert node.proc is not None
        code = node.proc.wait(timeout=DEADLINE)
    assert code == 1
    assert "worker failed to start" in node.log_text()
