"""Black-box tests: 3 real proxy processes with static peers in front of a real counting backend.

Every test uses its own URL (a unique path), so the module can share one backend and one cluster;
what a test asserts is the backend's per-URL request count and what the client received.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tokencache
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, http_get

pytestmark = pytest.mark.slow

SECRET = "e2e-peer-secret-do-not-log"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-e2e")


@pytest.fixture(scope="module")
def backend(workdir: Path) -> Iterator[BackendProcess]:
    with BackendProcess(workdir) as b:
        yield b


@pytest.fixture(scope="module")
def cluster(backend: BackendProcess, workdir: Path) -> Iterator[ProxyCluster]:
    env = {"CACHE_TTL": "300s", "BACKEND_TIMEOUT": "2s", "CACHE_MAX_BODY_BYTES": "200000"}
    c = ProxyCluster(3, backend.url, workdir, env=env, peer_secret=SECRET)
    with c:
        yield c
    # Secrets never reach the logs (checked once every test of the module has run).
    assert SECRET not in c.logs()


def unique(prefix: str) -> str:
    return f"/{prefix}/{uuid.uuid4().hex[:12]}"


def count(backend: BackendProcess, target: str) -> int:
    return int(backend.stats()["by_target"].get(target, 0))


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=15.0)


async def test_300_concurrent_gets_make_one_backend_request(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    # The backend is slow enough that every request arrives while the one load is running.
    target = unique("burst") + "?delay=1&size=1024"
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        urls = [cluster.nodes[i % 3].url + target for i in range(300)]
        responses = await asyncio.gather(*(client.get(u) for u in urls))
    assert [r.status_code for r in responses] == [200] * 300
    bodies = {r.content for r in responses}
    assert len(bodies) == 1
    assert next(iter(bodies)).startswith(f"{target} #1\n".encode())
    assert count(backend, target) == 1
    assert all("cache-status" in r.headers for r in responses)


def owner_index(cluster: ProxyCluster, target: str) -> int:
    """Which node owns GET `target` (the same ring every node builds from GROUPCACHE_PEERS)."""
    ring = tokencache.Ring([n.peer_url for n in cluster.nodes])
    return [n.peer_url for n in cluster.nodes].index(ring.owner(f"GET {target}") or "")


def test_miss_then_hit_on_another_node(cluster: ProxyCluster, backend: BackendProcess) -> None:
    target = unique("hit")
    owner = owner_index(cluster, target)
    first = get(cluster.nodes[owner].url + target)
    assert first.status_code == 200
    assert first.headers["cache-status"].startswith("tokencache; fwd=miss")
    for node in cluster.nodes:
        again = get(node.url + target)
        assert again.status_code == 200
        assert again.content == first.content
        assert again.headers["cache-status"].startswith("tokencache; hit")
    assert count(backend, target) == 1


def test_first_request_on_a_non_owner_says_miss(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("remote-miss")
    owner = owner_index(cluster, target)
    other = (owner + 1) % len(cluster.nodes)
    first = get(cluster.nodes[other].url + target)  # the owner loads it for this request
    assert first.status_code == 200
    assert first.headers["cache-status"].startswith("tokencache; fwd=miss")
    second = get(cluster.nodes[(owner + 2) % len(cluster.nodes)].url + target)
    assert second.headers["cache-status"].startswith("tokencache; hit")
    assert count(backend, target) == 1


@pytest.mark.parametrize(
    ("query", "detail"),
    [("cc=no-store", "no-store"), ("cc=private", "private"), ("cookie=1", "set-cookie")],
)
def test_uncacheable_responses_are_not_stored(
    cluster: ProxyCluster, backend: BackendProcess, query: str, detail: str
) -> None:
    target = unique("nostore") + "?" + query
    bodies = [get(cluster.nodes[i].url + target) for i in (0, 1, 2, 0)]
    assert [r.status_code for r in bodies] == [200] * 4
    # Every answer came from the backend: no two clients got the same response.
    assert len({r.content for r in bodies}) == 4
    for r in bodies:
        assert "hit" not in r.headers["cache-status"].split(";")[1]
        assert detail in r.headers["cache-status"]
    # Once the URI is known to be uncacheable, each request is forwarded exactly once.
    before = count(backend, target)
    get(cluster.nodes[1].url + target)
    assert count(backend, target) == before + 1
    if query == "cookie=1":
        assert bodies[-1].headers["set-cookie"].startswith("session=s")


def test_authorization_bypasses_the_shared_cache(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("authz")
    a = get(cluster.nodes[1].url + target, Authorization="Bearer user-a-token")
    b = get(cluster.nodes[1].url + target, Authorization="Bearer user-b-token")
    assert (a.status_code, b.status_code) == (200, 200)
    assert "bypass" in a.headers["cache-status"]
    # An anonymous request afterwards does not see what the authorized ones got.
    anon = get(cluster.nodes[1].url + target)
    assert anon.content == f"{target} #3\n".encode()
    assert count(backend, target) == 3


def test_vary_header_values_are_part_of_the_key(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("vary") + "?vary=X-Lang"
    en = get(cluster.nodes[0].url + target, **{"X-Lang": "en"})
    de = get(cluster.nodes[1].url + target, **{"X-Lang": "de"})
    en2 = get(cluster.nodes[2].url + target, **{"X-Lang": "en"})
    assert en.content != de.content
    assert en2.content == en.content
    # Both variants are now stored: no more backend requests, from any node.
    before = count(backend, target)
    again = [
        get(n.url + target, **{"X-Lang": lang}) for n in cluster.nodes for lang in ("en", "de")
    ]
    assert [r.content for r in again] == [en.content, de.content] * 3
    assert count(backend, target) == before


def test_post_body_and_headers_arrive_intact(cluster: ProxyCluster) -> None:
    body = os.urandom(150_000)
    headers = {
        "X-Custom": "value-1",
        "Content-Type": "application/octet-stream",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "must-not-pass",
    }
    r = httpx.post(cluster.nodes[0].url + "/echo?x=1", content=body, headers=headers, timeout=15)
    assert r.status_code == 200
    echo = r.json()
    assert echo["method"] == "POST"
    assert echo["path_qs"] == "/echo?x=1"
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    seen = {k.lower(): v for k, v in echo["headers"]}
    assert seen["x-custom"] == "value-1"
    assert "x-hop" not in seen


def test_chunked_request_body_is_forwarded(cluster: ProxyCluster) -> None:
    parts = [os.urandom(10_000) for _ in range(5)]

    def stream() -> Iterator[bytes]:
        yield from parts

    r = httpx.put(cluster.nodes[2].url + "/echo", content=stream(), timeout=15)
    assert r.status_code == 200
    echo = r.json()
    assert echo["method"] == "PUT"
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def test_gzip_bytes_pass_unchanged(cluster: ProxyCluster, backend: BackendProcess) -> None:
    target = unique("gz") + "?gzip=1&size=5000"
    expected = gzip.compress(f"{target} #1\n".encode().ljust(5000, b"x"), mtime=0)
    for node in (cluster.nodes[0], cluster.nodes[1]):  # a miss, then a hit elsewhere
        with httpx.stream("GET", node.url + target, headers={"Accept-Encoding": "gzip"}) as r:
            raw = b"".join(r.iter_raw())
            assert r.headers["content-encoding"] == "gzip"
        assert raw == expected
    assert count(backend, target) == 1


def test_large_bodies_pass_uncached(cluster: ProxyCluster, backend: BackendProcess) -> None:
    target = unique("big") + "?size=300000"  # above CACHE_MAX_BODY_BYTES=200000
    first, second = (get(cluster.nodes[0].url + target) for _ in range(2))
    assert len(first.content) == len(second.content) == 300_000
    assert first.content != second.content  # each from the backend
    before = count(backend, target)
    assert len(get(cluster.nodes[2].url + target).content) == 300_000
    assert count(backend, target) == before + 1


def test_backend_timeout_is_504_and_not_cached(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("slow") + "?delay=5"
    r = get(cluster.nodes[0].url + target)
    assert r.status_code == 504
    assert r.headers["content-type"].startswith("text/plain")
    assert r.content
    assert "hit" not in r.headers["cache-status"].split(";")[1]


def test_backend_refused_is_502(workdir: Path) -> None:
    # A port nobody listens on: connection refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed when the block ends; nothing will listen there
    env = {"PEER_DISCOVERY": "none", "BACKEND_TIMEOUT": "2s"}
    with ProxyCluster(1, f"http://127.0.0.1:{dead}", workdir / "refused", env=env) as c:
        r1 = get(c.nodes[0].url + "/x")
        r2 = get(c.nodes[0].url + "/x")
    assert (r1.status_code, r2.status_code) == (502, 502)
    assert r1.headers["content-type"].startswith("text/plain")
    assert "hit" not in r2.headers["cache-status"].split(";")[1]


def test_metrics_names_present(cluster: ProxyCluster) -> None:
    get(cluster.nodes[0].url + unique("metrics"))
    status, body, _ = http_get(cluster.nodes[0].metrics_url)
    assert status == 200
    text = body.decode()
    assert "requests_seconds_bucket{" in text
    assert 'groupcache_gets_total{group="path"}' in text or 'groupcache_gets{group="path"}' in text
    assert "process_cpu_seconds_total" in text
    # kubecache's histogram carries a bounded uri label (the path, no query)
    assert (
        'requests_seconds_bucket{le="+Inf",method="GET",outcome="SUCCESS",status="200",uri="/'
        in text
    )
    assert "?" not in "".join(line for line in text.splitlines() if "uri=" in line)
    assert SECRET not in text


def test_health_and_ready(cluster: ProxyCluster) -> None:
    node = cluster.nodes[1]
    assert http_get(node.health_url + "/health")[0] == 200
    status, body, _ = http_get(node.health_url + "/ready")
    assert (status, body) == (200, b"ready\n")
    # The public port does not expose the peer protocol: the path is just forwarded.
    r = httpx.post(node.url + "/_tokencache/v1/http/get", content=b"GET /x", timeout=10)
    assert "x-tokencache-error" not in r.headers
    assert r.content.startswith(b"/_tokencache/v1/http/get #")
