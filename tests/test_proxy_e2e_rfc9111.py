"""Black-box: three real proxies in front of a backend that speaks HTTP caching (RFC 9111).

The cluster runs as a pure shared cache (``CACHE_TTL=0 CACHE_ERROR_TTL=0``): what is stored and
for how long is the backend's word. Requests go to different nodes on purpose — the owner of a
key is whichever node the ring names, and every rule must hold cluster-wide. Staleness is made
without waiting: the backend sends an ``Age`` as large as the freshness lifetime on the first
response of a URL (``age1``), so the stored response is stale on arrival and the next one is
fresh. Each test uses its own URLs.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.proxy_cluster import BackendProcess, ProxyCluster, http_get, wait_until

pytestmark = pytest.mark.slow

PURGE_TOKEN = "purge-token-for-tests"
DEADLINE = 15.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-rfc9111")


@pytest.fixture(scope="module")
def backend(workdir: Path) -> Iterator[BackendProcess]:
    with BackendProcess(workdir, module="tests.support.rfc_backend") as b:
        yield b


@pytest.fixture(scope="module")
def cluster(backend: BackendProcess, workdir: Path) -> Iterator[ProxyCluster]:
    env = {
        "CACHE_TTL": "0",
        "CACHE_ERROR_TTL": "0",
        "CACHE_PURGE_TOKEN": PURGE_TOKEN,
        "TRACE": "false",
    }
    with ProxyCluster(3, backend.url, workdir / "cluster", env=env) as c:
        yield c


def unique(name: str) -> str:
    return f"/{name}/{uuid.uuid4().hex[:12]}"


def get(cluster: ProxyCluster, node: int, target: str, **headers: str) -> httpx.Response:
    return httpx.get(cluster.nodes[node].url + target, headers=headers, timeout=10.0)


def log(backend: BackendProcess, target: str) -> list[dict[str, Any]]:
    """The backend's record of the requests for `target`."""
    status, body, _ = http_get(backend.url + "/_control/log")
    assert status == 200
    return [r for r in json.loads(body) if r["target"] == target]


def set_failing(backend: BackendProcess, target: str, status: int) -> None:
    r = httpx.post(f"{backend.url}/_control/fail", params={"target": target, "status": status})
    assert r.status_code == 200


def cache_status(r: httpx.Response) -> str:
    return r.headers["cache-status"]


# --- 1. freshness from the origin ---------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["cc=max-age=60", "cc=s-maxage=60,max-age=0", "expires=60", "cdn=max-age=60&cc=no-store"],
)
def test_freshness_from_each_header_makes_a_cluster_wide_hit(
    cluster: ProxyCluster, backend: BackendProcess, query: str
) -> None:
    target = unique("fresh") + "?" + query
    first = get(cluster, 0, target)
    second = get(cluster, 1, target)
    third = get(cluster, 2, target)
    assert first.text == second.text == third.text == f"{target} #1"
    assert "fwd=miss" in cache_status(first)
    assert cache_status(third).startswith("tokencache; hit; ttl=")
    assert 55 <= int(cache_status(third).rsplit("=", 1)[1]) <= 60
    assert len(log(backend, target)) == 1


@pytest.mark.parametrize(
    "query", ["cc=max-age=0", "cc=no-store", "expires=-10", "cc=s-maxage=0,max-age=60", "x=1"]
)
def test_no_freshness_means_every_request_reaches_the_backend(
    cluster: ProxyCluster, backend: BackendProcess, query: str
) -> None:
    target = unique("stale") + "?" + query
    bodies = [get(cluster, i, target).text for i in (0, 1, 2, 0)]
    assert bodies == [f"{target} #{n}" for n in (1, 2, 3, 4)]
    assert len(log(backend, target)) == 4


def test_age_arithmetic(cluster: ProxyCluster, backend: BackendProcess) -> None:
    # Age 40 of a 60 s lifetime: 20 s of freshness left, and the Age sent on goes on from 40.
    target = unique("age") + "?cc=max-age=60&age=40"
    get(cluster, 0, target)
    hit = get(cluster, 1, target)
    assert hit.text == f"{target} #1"
    assert 40 <= int(hit.headers["age"]) <= 45
    assert 15 <= int(cache_status(hit).rsplit("=", 1)[1]) <= 20
    # Age beyond the lifetime: stale on arrival, never a hit
    old = unique("age") + "?cc=max-age=60&age=61"
    assert [get(cluster, i, old).text for i in (0, 1)] == [f"{old} #1", f"{old} #2"]


def test_statuses_without_freshness_follow_rfc_9110(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    # 503 without freshness: never stored; with max-age: stored like any response
    plain = unique("s503") + "?status=503"
    assert [get(cluster, i, plain).status_code for i in (0, 1)] == [503, 503]
    assert len(log(backend, plain)) == 2
    fresh = unique("s503") + "?status=503&cc=max-age=60"
    assert [get(cluster, i, fresh).text for i in (0, 1)] == [f"{fresh} #1"] * 2


# --- 2 and 3. directives and validation --------------------------------------------------------


def test_no_cache_revalidates_with_a_304_once_and_updates_the_headers(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("nocache") + "?cc=no-cache&etag=v1"
    first = get(cluster, 0, target)
    second = get(cluster, 1, target)
    third = get(cluster, 2, target)
    # the body is the stored one; the headers are the 304's (X-Count counts backend responses)
    assert first.text == second.text == third.text == f"{target} #1"
    assert (first.headers["x-count"], third.headers["x-count"]) == ("1", "3")
    assert "fwd=stale" in cache_status(second)
    requests = log(backend, target)
    assert len(requests) == 3
    assert "if-none-match" not in requests[0]["headers"]
    assert [r["headers"].get("if-none-match") for r in requests[1:]] == ['"v1"', '"v1"']


def test_must_revalidate_never_serves_stale_on_error(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("mustrev") + "?cc=max-age=30,must-revalidate,stale-if-error=600&age=30&etag=m"
    assert get(cluster, 0, target).status_code == 200
    set_failing(backend, target, 503)
    r = get(cluster, 1, target)
    assert r.status_code == 503


def test_stale_while_revalidate_refreshes_once_for_the_cluster(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("swr") + "?cc=max-age=30,stale-while-revalidate=600&age1=40"
    assert get(cluster, 0, target).text == f"{target} #1"
    stale = get(cluster, 1, target)
    assert stale.text == f"{target} #1"  # answered at once from the stale entry
    assert "detail=stale" in cache_status(stale)
    wait_until(lambda: len(log(backend, target)) >= 2, DEADLINE, "background refresh")
    answers = [get(cluster, i % 3, target).text for i in range(9)]
    assert answers[-3:] == [f"{target} #2"] * 3
    assert len(log(backend, target)) == 2  # one refresh for the whole cluster


def test_stale_if_error_on_5xx_keeps_the_right_variant(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("sie") + "?cc=max-age=30,stale-if-error=600&age=40&vary=Accept-Language"
    en = get(cluster, 0, target, **{"Accept-Language": "en"})
    fr = get(cluster, 1, target, **{"Accept-Language": "fr"})
    assert en.text.endswith("accept-language=en") and fr.text.endswith("accept-language=fr")
    set_failing(backend, target, 503)
    for node in (0, 1, 2):
        stale = get(cluster, node, target, **{"Accept-Language": "fr"})
        assert stale.status_code == 200
        assert stale.text == fr.text  # the fr variant, not the one the base key holds
        assert "fwd=stale" in cache_status(stale) and "fwd-status=503" in cache_status(stale)
        # Age is the response's current age (RFC 9111 §4.2.3): 40 on arrival, plus seconds since,
        # not the 630 s the entry is kept for.
        assert 40 <= int(stale.headers["age"]) <= 50, stale.headers["age"]
    set_failing(backend, target, 0)


# --- 3. client conditionals -------------------------------------------------------------------


def test_client_conditionals_get_a_304_from_the_cache(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("cond") + "?cc=max-age=60&etag=abc&lm=-3600"
    full = get(cluster, 0, target)
    lm = full.headers["last-modified"]
    inm = get(cluster, 1, target, **{"If-None-Match": 'W/"abc"'})
    ims = get(cluster, 2, target, **{"If-Modified-Since": lm})
    other = get(cluster, 2, target, **{"If-None-Match": '"zzz"'})
    assert (inm.status_code, ims.status_code, other.status_code) == (304, 304, 200)
    assert inm.content == b"" and inm.headers["etag"] == '"abc"'
    assert inm.headers["cache-control"] == "max-age=60"
    assert "content-length" not in inm.headers or inm.headers["content-length"] == "0"
    assert len(log(backend, target)) == 1


# --- 4. invalidation and purge ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_unsafe_methods_invalidate_on_every_node(
    cluster: ProxyCluster, backend: BackendProcess, method: str
) -> None:
    target = unique("inval") + "?cc=max-age=600"
    for node in (0, 1, 2):
        assert get(cluster, node, target).text == f"{target} #1"
    r = httpx.request(method, cluster.nodes[1].url + target, content=b"x", timeout=10.0)
    assert r.status_code == 200
    assert [get(cluster, node, target).text for node in (2, 0)] == [f"{target} #3"] * 2


def test_location_on_the_same_origin_is_invalidated(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    cached = unique("loc") + "?cc=max-age=600"
    get(cluster, 0, cached)
    post = unique("form") + "?loc=" + cached.replace("?", "%3F").replace("&", "%26")
    assert httpx.post(cluster.nodes[1].url + post, timeout=10.0).status_code == 200
    assert get(cluster, 2, cached).text == f"{cached} #2"


def test_error_responses_to_unsafe_methods_do_not_invalidate(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("keep") + "?cc=max-age=600"
    get(cluster, 0, target)
    set_failing(backend, target, 500)
    assert httpx.post(cluster.nodes[1].url + target, timeout=10.0).status_code == 500
    set_failing(backend, target, 0)
    assert get(cluster, 2, target).text == f"{target} #1"


def test_purge_needs_the_token_and_removes_cluster_wide(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("purge") + "?cc=max-age=600"
    for node in (0, 1, 2):
        get(cluster, node, target)
    denied = httpx.request("PURGE", cluster.nodes[0].url + target, timeout=10.0)
    assert denied.status_code == 401
    wrong = httpx.request(
        "PURGE", cluster.nodes[0].url + target, headers={"Authorization": "Bearer no"}
    )
    assert wrong.status_code == 401
    assert get(cluster, 2, target).text == f"{target} #1"
    ok = httpx.request(
        "PURGE",
        cluster.nodes[0].url + target,
        headers={"Authorization": f"Bearer {PURGE_TOKEN}"},
        timeout=10.0,
    )
    assert ok.status_code == 200
    assert [get(cluster, node, target).text for node in (1, 2)] == [f"{target} #2"] * 2
    assert all(r["method"] == "GET" for r in log(backend, target))  # PURGE never went upstream


# --- 5. Range ---------------------------------------------------------------------------------


def test_range_and_if_range_on_a_cached_response(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("range") + "?cc=max-age=600&etag=r1"
    body = f"{target} #1".encode()
    miss = get(cluster, 0, target, Range="bytes=0-3")  # a miss fills the cache, answers 206
    assert (miss.status_code, miss.content) == (206, body[:4])
    assert miss.headers["content-range"] == f"bytes 0-3/{len(body)}"
    assert "range" not in log(backend, target)[0]["headers"]
    suffix = get(cluster, 1, target, Range="bytes=-2")
    assert (suffix.status_code, suffix.content) == (206, body[-2:])
    multi = get(cluster, 2, target, Range="bytes=0-0,2-3")
    assert multi.status_code == 206
    assert multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert b"Content-Range: bytes 0-0/" in multi.content and body[2:4] in multi.content
    bad = get(cluster, 1, target, Range=f"bytes={len(body) + 5}-")
    assert (bad.status_code, bad.headers["content-range"]) == (416, f"bytes */{len(body)}")
    same = get(cluster, 2, target, Range="bytes=0-3", **{"If-Range": '"r1"'})
    changed = get(cluster, 2, target, Range="bytes=0-3", **{"If-Range": '"r0"'})
    assert (same.status_code, changed.status_code, changed.content) == (206, 200, body)
    assert len(log(backend, target)) == 1


# --- 6. faithful misses -----------------------------------------------------------------------


def test_a_miss_carries_the_clients_end_to_end_headers(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("faithful") + "?cc=max-age=600"
    get(
        cluster,
        2,
        target,
        **{
            "User-Agent": "probe/1.0",
            "Accept": "text/x-probe",
            "Accept-Language": "de",
            "X-Custom": "kept",
            "If-None-Match": '"client-tag"',
            "Range": "bytes=0-1",
            "Connection": "X-Hop",
            "X-Hop": "dropped",
        },
    )
    (request,) = log(backend, target)
    headers = request["headers"]
    assert headers["user-agent"] == "probe/1.0"
    assert headers["accept"] == "text/x-probe"
    assert headers["accept-language"] == "de"
    assert headers["x-custom"] == "kept"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["forwarded"] == "for=127.0.0.1;proto=http"
    # A fill's response is shared: no host a client chose (cache poisoning through unkeyed
    # headers), see the next test.
    for absent in ("if-none-match", "range", "x-hop", "authorization", "x-forwarded-host"):
        assert absent not in headers


def test_a_fill_carries_no_host_or_forwarding_chain_a_client_chose(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    # One request with a hostile Host and forwarding chain fills the cache for every client: the
    # backend must not see them, or links it builds from them reach everyone.
    target = unique("poison") + "?cc=max-age=600"
    get(
        cluster,
        0,
        target,
        Host="evil.example",
        **{
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-For": "10.6.6.6",
            "X-Forwarded-Proto": "https",
            "Forwarded": "for=10.6.6.6;host=evil.example",
        },
    )
    assert get(cluster, 1, target).status_code == 200  # another client: a hit on that fill
    (request,) = log(backend, target)
    assert "evil.example" not in json.dumps(request["headers"])
    assert request["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert request["headers"]["x-forwarded-proto"] == "http"


def test_head_is_answered_from_the_stored_get(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("head") + "?cc=max-age=600"
    head = httpx.head(cluster.nodes[0].url + target, timeout=10.0)
    got = get(cluster, 1, target)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert got.text == f"{target} #1"
    assert [r["method"] for r in log(backend, target)] == ["GET"]


# --- 7. one backend request per client request ------------------------------------------------


@pytest.mark.parametrize("query", ["cc=no-store", "cc=private,max-age=60", "cookie=1"])
def test_a_first_unstorable_response_reaches_the_backend_once(
    cluster: ProxyCluster, backend: BackendProcess, query: str
) -> None:
    target = unique("once") + "?" + query
    first = get(cluster, 1, target)
    assert first.text == f"{target} #1"
    assert len(log(backend, target)) == 1
    if query == "cookie=1":
        assert first.headers["set-cookie"] == "session=1"


def test_concurrent_waiters_never_get_another_clients_private_response(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("private") + "?cookie=1&delay=0.5&cc=max-age=60"
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: get(cluster, i % 3, target), range(6)))
    cookies = [r.headers["set-cookie"] for r in answers]
    assert len(set(cookies)) == 6  # each client its own response
    assert len(log(backend, target)) == 6  # and exactly one backend request each
    assert all(r.text.endswith(c.split("=")[1]) for r, c in zip(answers, cookies, strict=True))


def test_the_first_request_with_a_varied_header_reaches_the_backend_once(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    target = unique("vary1") + "?cc=max-age=60&vary=Accept-Language"
    fr = get(cluster, 0, target, **{"Accept-Language": "fr"})
    assert fr.text.endswith("accept-language=fr")
    assert len(log(backend, target)) == 1
    again = get(cluster, 2, target, **{"Accept-Language": "fr"})
    assert again.text == fr.text
    assert len(log(backend, target)) == 1


# --- 8. robust upstream connections -----------------------------------------------------------


def test_a_response_longer_than_its_content_length_poisons_nothing(
    cluster: ProxyCluster, backend: BackendProcess
) -> None:
    for _ in range(5):
        poisoned = get(cluster, 0, "/poison")
        assert (poisoned.status_code, poisoned.content) == (200, b"hello")
        innocent = unique("innocent")
        r = get(cluster, 0, innocent)
        assert (r.status_code, r.text) == (200, f"{innocent} #1")


def test_the_proxy_never_sends_to_anything_but_the_backend(cluster: ProxyCluster) -> None:
    # An absolute-form target naming another host still goes to the backend (no open proxy).
    with socket.create_connection(("127.0.0.1", cluster.nodes[0].port), timeout=10) as s:
        target = unique("abs")
        s.sendall(f"GET http://example.invalid{target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200")
    assert f"{target} #1".encode() in data
