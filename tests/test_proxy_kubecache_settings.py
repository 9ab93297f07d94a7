"""kubecache settings the table says are honoured, checked on an in-process proxy service:
purge interval and its switch, PROMETHEUS_ENABLE, KUBEGROUP_DEBUG, the HTTP group's name,
GROUPCACHE_VERSION's accepted values, AUTOMEMLIMIT_DEBUG accepted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.support.net import free_port
from tokencache.proxy import ConfigError, ProxyService, Settings
from tokencache.proxy._logging import configure_logging

Env = dict[str, str]


def _env(**extra: str) -> tuple[Env, int, int, int]:
    listen, health, metrics = free_port(), free_port(), free_port()
    env = {
        "BACKEND_URL": "http://127.0.0.1:1",
        "LISTEN_ADDR": f"127.0.0.1:{listen}",
        "GROUPCACHE_PORT": "127.0.0.1:0",
        "HEALTH_ADDR": f"127.0.0.1:{health}",
        "METRICS_ADDR": f"127.0.0.1:{metrics}",
        "PEER_DISCOVERY": "none",
        "TRACE": "false",
        "DOGSTATSD_ENABLE": "false",
        **extra,
    }
    return env, listen, health, metrics


@pytest.fixture
async def service_of() -> AsyncIterator[Callable[[Env], ProxyService]]:
    started: list[ProxyService] = []

    def make(env: Env) -> ProxyService:
        service = ProxyService(Settings.from_env(env), install_tracer=False)
        started.append(service)
        return service

    yield make
    for service in started:
        await service.shutdown()


async def test_purge_interval_is_kubecaches(service_of: Callable[[Env], ProxyService]) -> None:
    default = service_of(_env()[0])
    await default.start()
    assert default.workspace.purge_interval == 30 * 60  # Go: 30m
    tuned = service_of(_env(GROUPCACHE_EXPIRED_KEYS_EVICTION_INTERVAL="90s")[0])
    await tuned.start()
    assert tuned.workspace.purge_interval == 90
    off = service_of(_env(GROUPCACHE_DISABLE_PURGE_EXPIRED="true")[0])
    await off.start()
    assert off.workspace.purge_interval == 0


async def test_prometheus_enable_false_serves_no_metrics(
    service_of: Callable[[Env], ProxyService],
) -> None:
    env, _, health, metrics = _env(PROMETHEUS_ENABLE="false")
    service = service_of(env)
    await service.start()
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"http://127.0.0.1:{health}/health")).status_code == 200
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{metrics}/metrics")
    shared, _, health2, _ = _env(PROMETHEUS_ENABLE="false")
    shared["METRICS_ADDR"] = shared["HEALTH_ADDR"]
    other = service_of(shared)
    await other.start()
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"http://127.0.0.1:{health2}/metrics")).status_code == 404


async def test_http_group_name(service_of: Callable[[Env], ProxyService]) -> None:
    default = service_of(_env()[0])
    await default.start()
    assert "path" in default.workspace.groups
    named = service_of(_env(GROUPCACHE_GROUP_NAME="http")[0])
    await named.start()
    assert "http" in named.workspace.groups and "path" not in named.workspace.groups


def test_kubegroup_debug_false_keeps_discovery_at_info() -> None:
    discovery = logging.getLogger("tokencache.discovery")
    before = discovery.level
    try:
        configure_logging(debug=True, quiet=("tokencache.discovery",))
        assert not discovery.isEnabledFor(logging.DEBUG)
        assert logging.getLogger("proxy").isEnabledFor(logging.DEBUG)
    finally:
        discovery.setLevel(before)
        configure_logging(debug=False)


@pytest.mark.parametrize("version", ["2", "3"])
def test_groupcache_version_is_accepted(version: str) -> None:
    s = Settings.from_env({"BACKEND_URL": "http://b:1", "GROUPCACHE_VERSION": version})
    assert s.groupcache_version == int(version)


def test_groupcache_version_other_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^GROUPCACHE_VERSION: 4 is not 2 or 3$"):
        Settings.from_env({"BACKEND_URL": "http://b:1", "GROUPCACHE_VERSION": "4"})


def test_automemlimit_debug_is_accepted() -> None:
    Settings.from_env({"BACKEND_URL": "http://b:1", "AUTOMEMLIMIT_DEBUG": "true"})
