"""kubecache's pushed metrics: DogStatsD datagrams caught by a local UDP listener and CloudWatch
EMF lines caught on a real proxy's stdout, with udhos/groupcache_datadog's and
udhos/groupcache_awsemf's names, tags and dimensions; counters are deltas between exports.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import tokencache
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, wait_until
from tokencache.proxy._push_metrics import PushExporter, Reading, dogstatsd_lines, emf_documents


def _datagrams(sock: socket.socket) -> list[str]:
    lines: list[str] = []
    for _ in range(10_000):  # bounded: drain what arrived
        try:
            data = sock.recv(65_535)
        except BlockingIOError:
            break
        lines.extend(data.decode().splitlines())
    return lines


def test_dogstatsd_line_format() -> None:
    reading = Reading(
        "path",
        {"gets": 3},
        {"get_from_peers_latency_slowest_milliseconds": 1.5},
        {"main": ({"cache_hits": 2}, {"cache_items": 4.0})},
    )
    lines = dogstatsd_lines(reading, ("pod_name:p1", "service:kubecache"))
    assert "gets:3|c|#group:path,pod_name:p1,service:kubecache" in lines
    assert (
        "get_from_peers_latency_slowest_milliseconds:1.5|g|#group:path,pod_name:p1,"
        "service:kubecache" in lines
    )
    assert "cache_items:4|g|#group:path,pod_name:p1,service:kubecache,type:main" in lines
    assert "cache_hits:2|c|#group:path,pod_name:p1,service:kubecache,type:main" in lines


def test_emf_document_shape() -> None:
    reading = Reading("path", {"gets": 3}, {}, {"hot": ({}, {"cache_bytes": 10.0})})
    group_doc, hot_doc = emf_documents(reading, 1_700_000_000_000)
    meta = group_doc["_aws"]["CloudWatchMetrics"][0]
    assert group_doc["_aws"]["Timestamp"] == 1_700_000_000_000
    assert meta["Namespace"] == "groupcache"
    assert meta["Dimensions"] == [["application", "group"]]
    assert {"Name": "gets", "Unit": "Count"} in meta["Metrics"]
    assert group_doc["application"] == "kubecache" and group_doc["gets"] == 3
    assert hot_doc["type"] == "hot" and hot_doc["cache_bytes"] == 10
    assert hot_doc["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "cache_bytes", "Unit": "Bytes"}
    ]


async def test_counters_are_deltas_between_exports() -> None:
    async def load(key: str) -> tokencache.Entry:
        return tokencache.Entry(key.encode(), 60)

    ws = tokencache.Workspace()
    group = ws.new_group("path", max_bytes=1 << 20, loader=load)
    out = io.StringIO()
    pusher = PushExporter(lambda: [group], interval=3600, emf_out=out, wall_ms=lambda: 1)
    await group.get("a")
    pusher.export_once()
    await group.get("a")
    await group.get("b")
    pusher.export_once()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    gets = [d["gets"] for d in docs if "gets" in d and "type" not in d]
    assert gets == [1, 2]


@pytest.mark.slow
def test_proxy_sends_dogstatsd_to_the_agent_address(tmp_path: Path) -> None:
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.bind(("127.0.0.1", 0))
    agent.setblocking(False)
    env = {
        "DOGSTATSD_ENABLE": "true",
        "DOGSTATSD_EXPORT_INTERVAL": "200ms",
        "DD_AGENT_HOST": "127.0.0.1",
        "DD_AGENT_PORT": str(agent.getsockname()[1]),
        "DD_TAGS": "env:test team:cache",
    }
    seen: list[str] = []
    try:
        with (
            BackendProcess(tmp_path) as backend,
            ProxyCluster(1, backend.url, tmp_path, env=env) as c,
        ):
            node = c.nodes[0]
            assert httpx.get(node.url + "/dd/1", timeout=10).status_code == 200

            def got_gets() -> bool:
                # One export is a burst of datagrams: wait for the whole of it, not its first.
                seen.extend(_datagrams(agent))
                return all(
                    any(line.startswith(prefix) for line in seen)
                    for prefix in ("gets:1|c|#group:path,", "local_load:1|c|#group:path")
                ) and any(x.startswith("cache_items:") and "type:main" in x for x in seen)

            wait_until(got_gets, 20, "a whole export burst")
    finally:
        agent.close()
    line = next(x for x in seen if x.startswith("gets:1|c|"))
    tags = line.split("|#", 1)[1].split(",")
    assert {"group:path", "service:kubecache", "env:test", "team:cache"} <= set(tags)
    assert any(t.startswith("pod_name:") for t in tags)
    assert any(x.startswith("cache_items:") and "type:main" in x for x in seen)


@pytest.mark.slow
def test_proxy_writes_emf_lines_on_stdout(tmp_path: Path) -> None:
    env = {"EMF_ENABLE": "true", "DOGSTATSD_ENABLE": "false"}
    with BackendProcess(tmp_path) as backend:
        cluster = ProxyCluster(1, backend.url, tmp_path, env=env)
        with cluster:
            node = cluster.nodes[0]
            for _ in range(2):
                assert httpx.get(node.url + "/emf/1", timeout=10).status_code == 200
        log = node.log_text()  # stopped: the last export is written
    docs = []
    for line in log.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "_aws" in doc:
            docs.append(doc)
    path_docs = [d for d in docs if d.get("group") == "path" and "type" not in d]
    assert sum(d["gets"] for d in path_docs) == 2
    assert sum(d["hits"] for d in path_docs) == 1
    assert all(d["application"] == "kubecache" for d in docs)


def test_emf_send_logs_is_refused() -> None:
    from tokencache.proxy import ConfigError, Settings

    with pytest.raises(ConfigError, match=r"^EMF_SEND_LOGS: .*CloudWatch agent"):
        Settings.from_env({"BACKEND_URL": "http://b:1", "EMF_SEND_LOGS": "true"})


async def test_a_slow_agent_name_lookup_never_stalls_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DD_AGENT_HOST is resolved again every DOGSTATSD_CLIENT_TTL; a slow DNS answer (CoreDNS
    # timeouts, search-domain expansion) must not freeze the loop that serves every request.
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.bind(("127.0.0.1", 0))
    agent.setblocking(False)
    real_getaddrinfo = socket.getaddrinfo

    def slow_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.8)
        return real_getaddrinfo(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)

    async def load(key: str) -> tokencache.Entry:
        return tokencache.Entry(key.encode(), 60)

    ws = tokencache.Workspace()
    group = ws.new_group("path", max_bytes=1 << 20, loader=load)
    await group.get("a")
    port = agent.getsockname()[1]
    pusher = PushExporter(
        lambda: [group], interval=3600, dogstatsd=("localhost", port, 60.0, (), False)
    )
    loop = asyncio.get_running_loop()
    worst = 0.0
    try:
        pusher.start()
        seen: list[str] = []
        deadline = loop.time() + 10
        while loop.time() < deadline and not any(x.startswith("gets:1|c") for x in seen):
            before = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - before)
            seen.extend(_datagrams(agent))
        await pusher.stop()
    finally:
        agent.close()
    assert any(x.startswith("gets:1|c|#group:path") for x in seen)
    assert worst < 0.4, f"the event loop stalled {worst:.2f}s on a DNS lookup"


@pytest.mark.slow
def test_proxy_sends_discoverys_events_and_peers_to_dogstatsd(tmp_path: Path) -> None:
    # kubegroup and ecs-task-discovery sent "events" (a count per peer update) and "peers" (a
    # gauge) through kubecache's DogStatsD client; ECS with FORCE_SINGLE_TASK needs no API.
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.bind(("127.0.0.1", 0))
    agent.setblocking(False)
    env = {
        "COMPUTE": "ecs",
        "FORCE_SINGLE_TASK": "true",
        "GROUPCACHE_PEERS": "",
        "PEER_DISCOVERY": "auto",
        "DOGSTATSD_ENABLE": "true",
        "DOGSTATSD_EXPORT_INTERVAL": "200ms",
        "DD_AGENT_HOST": "127.0.0.1",
        "DD_AGENT_PORT": str(agent.getsockname()[1]),
    }
    seen: list[str] = []
    try:
        with (
            BackendProcess(tmp_path) as backend,
            ProxyCluster(1, backend.url, tmp_path, env=env),
        ):

            def got_both() -> bool:
                seen.extend(_datagrams(agent))
                return any(x.startswith("peers:1|g|#") for x in seen) and any(
                    x.startswith("events:1|c|#") for x in seen
                )

            wait_until(got_both, 20, "peers and events datagrams")
    finally:
        agent.close()
    line = next(x for x in seen if x.startswith("peers:1|g|#"))
    tags = line.split("|#", 1)[1].split(",")
    assert "service:kubecache" in tags and any(t.startswith("pod_name:") for t in tags)
    assert not any(t.startswith("group:") for t in tags)
    assert sum(1 for x in seen if x.startswith("events:")) == 1  # one update, one count


def test_zero_interval_and_ttl_mean_a_minute_as_in_kubecache() -> None:
    from tokencache.proxy import Settings

    env = {
        "BACKEND_URL": "http://b:1",
        "DOGSTATSD_EXPORT_INTERVAL": "0",
        "DOGSTATSD_CLIENT_TTL": "0s",
    }
    s = Settings.from_env(env)
    assert (s.dogstatsd_export_interval, s.dogstatsd_client_ttl) == (60.0, 60.0)


@pytest.mark.slow
def test_proxy_with_zero_export_interval_does_not_spin(tmp_path: Path) -> None:
    # groupcache_datadog turned ExportInterval 0 into a minute; a loop with sleep(0) would flood
    # the agent and take the event loop from the requests.
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.bind(("127.0.0.1", 0))
    agent.setblocking(False)
    env = {
        "DOGSTATSD_ENABLE": "true",
        "DOGSTATSD_EXPORT_INTERVAL": "0",
        "DD_AGENT_HOST": "127.0.0.1",
        "DD_AGENT_PORT": str(agent.getsockname()[1]),
    }
    seen: list[str] = []
    try:
        with (
            BackendProcess(tmp_path) as backend,
            ProxyCluster(1, backend.url, tmp_path, env=env) as c,
        ):
            assert httpx.get(c.nodes[0].url + "/dd/zero", timeout=10).status_code == 200
            time.sleep(1.0)
            seen.extend(_datagrams(agent))
    finally:
        agent.close()
    assert sum(1 for line in seen if line.startswith("gets:")) <= 1  # the first export only
