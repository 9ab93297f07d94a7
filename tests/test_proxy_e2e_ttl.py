"""Black-box tests of expiry: CACHE_TTL, CACHE_ERROR_TTL and CACHE_STALE_IF_ERROR on real processes.

Expiry is shown without asserting any timing: one node keeps 2xx for 1s and errors for 300s, the
other the reverse; polling (bounded) until the short-lived entry is refetched, then checking the
long-lived one is still a hit, shows each TTL applies to its own kind of response.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.proxy_cluster import BackendProcess, ProxyCluster, wait_until

pytestmark = pytest.mark.slow

DEADLINE = 20.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-ttl")


@pytest.fixture(scope="module")
def backend(workdir: Path) -> Iterator[BackendProcess]:
    with BackendProcess(workdir) as b:
        yield b


def _node(backend: BackendProcess, workdir: Path, name: str, env: dict[str, str]) -> ProxyCluster:
    (workdir / name).mkdir()
    return ProxyCluster(1, backend.url, workdir / name, env={"PEER_DISCOVERY": "none", **env})


@pytest.fixture(scope="module")
def short_ok(backend: BackendProcess, workdir: Path) -> Iterator[ProxyCluster]:
    with _node(backend, workdir, "short-ok", {"CACHE_TTL": "1s", "CACHE_ERROR_TTL": "300s"}) as c:
        yield c


@pytest.fixture(scope="module")
def short_err(backend: BackendProcess, workdir: Path) -> Iterator[ProxyCluster]:
    with _node(backend, workdir, "short-err", {"CACHE_TTL": "300s", "CACHE_ERROR_TTL": "1s"}) as c:
        yield c


def fetch(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10.0)


def count(backend: BackendProcess, target: str) -> int:
    return int(backend.stats()["by_target"].get(target, 0))


def refetched(backend: BackendProcess, url: str, target: str) -> bool:
    fetch(url)
    return count(backend, target) >= 2


def test_cache_ttl_applies_to_2xx(short_ok: ProxyCluster, backend: BackendProcess) -> None:
    base = short_ok.nodes[0].url
    ok, err = f"/ok/{uuid.uuid4().hex}", f"/err/{uuid.uuid4().hex}?status=404"
    assert fetch(base + ok).status_code == 200
    assert fetch(base + err).status_code == 404
    wait_until(lambda: refetched(backend, base + ok, ok), DEADLINE, "2xx entry expired")
    r = fetch(base + err)
    assert r.status_code == 404
    assert "hit" in r.headers["cache-status"]
    assert count(backend, err) == 1


def test_cache_error_ttl_applies_to_errors(
    short_err: ProxyCluster, backend: BackendProcess
) -> None:
    base = short_err.nodes[0].url
    ok, err = f"/ok/{uuid.uuid4().hex}", f"/err/{uuid.uuid4().hex}?status=500"
    assert fetch(base + ok).status_code == 200
    assert fetch(base + err).status_code == 500
    wait_until(lambda: refetched(backend, base + err, err), DEADLINE, "error entry expired")
    r = fetch(base + ok)
    assert "hit" in r.headers["cache-status"]
    assert count(backend, ok) == 1


def test_stale_if_error_serves_the_expired_entry(tmp_path: Path) -> None:
    env = {
        "PEER_DISCOVERY": "none",
        "CACHE_TTL": "1s",
        "CACHE_STALE_IF_ERROR": "300s",
        "BACKEND_TIMEOUT": "2s",
    }
    with (
        BackendProcess(tmp_path) as own_backend,
        ProxyCluster(1, own_backend.url, tmp_path, env=env) as c,
    ):
        url = c.nodes[0].url + "/stale-me"
        first = fetch(url)
        assert first.status_code == 200
        own_backend.stop()  # from now on: connection refused

        def stale() -> httpx.Response | None:
            r = fetch(url)
            return r if "stale" in r.headers.get("cache-status", "") else None

        r = wait_until(stale, DEADLINE, "stale answer")
        assert r.status_code == 200
        assert r.content == first.content
        never_cached = fetch(c.nodes[0].url + "/never-seen")
        assert never_cached.status_code == 502
        assert "stale" not in never_cached.headers["cache-status"]
