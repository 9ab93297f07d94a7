"""PROXY_WORKERS settings: the worker count, and the port, URL and ring each worker derives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokencache.proxy._config import Address, Settings
from tokencache.proxy._errors import ConfigError
from tokencache.proxy._workers import (
    CGROUP_CPU_MAX,
    cpus_from_cgroup,
    expand_peers,
    local_peers,
    with_port_offset,
)

BASE = {"BACKEND_URL": "http://backend:9000", "PROXY_WORKERS": "1"}


@pytest.mark.parametrize(
    ("cpu_max", "affinity", "expected"),
    [
        ("max 100000\n", 8, 8),  # no quota: the affinity mask
        ("200000 100000\n", 8, 2),
        ("150000 100000", 8, 1),  # 1.5 CPUs: a worker per whole CPU
        ("50000 100000", 8, 1),  # below one CPU: still one worker
        ("800000 100000", 2, 2),  # quota above the CPUs we may run on
        (None, 4, 4),  # no cgroup v2
        ("garbage", 3, 3),
        ("100000 0", 3, 3),  # a zero period is not a quota
        ("-1 100000", 3, 3),
    ],
)
def test_cpus_from_the_cgroup_quota(cpu_max: str | None, affinity: int, expected: int) -> None:
    assert cpus_from_cgroup(cpu_max, affinity) == expected


def test_worker_urls_follow_from_the_pod_url() -> None:
    assert with_port_offset("http://10.0.0.1:5000", 0) == "http://10.0.0.1:5000"
    assert with_port_offset("http://10.0.0.1:5000", 2) == "http://10.0.0.1:5002"
    assert with_port_offset("http://[fd00::1]:5000", 1) == "http://[fd00::1]:5001"
    assert with_port_offset("https://peer.example", 1) == "https://peer.example:444"
    assert expand_peers(("http://a:5000", "http://b:6000"), 2) == (
        "http://a:5000",
        "http://a:5001",
        "http://b:6000",
        "http://b:6001",
    )
    assert local_peers(5000, 3) == (
        "http://127.0.0.1:5000",
        "http://127.0.0.1:5001",
        "http://127.0.0.1:5002",
    )


def test_the_supervisor_keeps_the_settings_as_given() -> None:
    env = {
        **BASE,
        "PROXY_WORKERS": "3",
        "GROUPCACHE_PEERS": "http://a:5000,http://b:5000",
        "GROUPCACHE_SELF_URL": "http://a:5000",
        "GROUPCACHE_PEER_SECRET": "s",
    }
    s = Settings.from_env(env)
    assert (s.proxy_workers, s.worker_index) == (3, -1)
    assert s.groupcache_peers == ("http://a:5000", "http://b:5000")


def test_each_worker_derives_its_port_url_and_the_whole_ring() -> None:
    env = {
        **BASE,
        "PROXY_WORKERS": "2",
        "GROUPCACHE_PORT": ":5000",
        "GROUPCACHE_PEERS": "http://a:5000,http://b:5000",
        "GROUPCACHE_SELF_URL": "http://b:5000",
        "GROUPCACHE_PEER_SECRET": "s",
        "TOKENCACHE_PROXY_WORKER": "1",
        "TOKENCACHE_PROXY_CONTROL": "/run/w1.sock",
    }
    s = Settings.from_env(env)
    assert s.groupcache_port == Address("", 5001)
    assert s.groupcache_self_url == "http://b:5001"
    assert s.groupcache_peers == (
        "http://a:5000",
        "http://a:5001",
        "http://b:5000",
        "http://b:5001",
    )
    assert s.worker_control == "/run/w1.sock"


def test_a_lone_pod_rings_its_own_workers_on_loopback() -> None:
    env = {**BASE, "PROXY_WORKERS": "2", "GROUPCACHE_PORT": ":7000", "TOKENCACHE_PROXY_WORKER": "0"}
    s = Settings.from_env(env)
    assert s.peer_discovery == "static"
    assert s.groupcache_peers == ("http://127.0.0.1:7000", "http://127.0.0.1:7001")
    assert s.groupcache_self_url == "http://127.0.0.1:7000"
    assert s.groupcache_port == Address("127.0.0.1", 7000)


def test_kubernetes_workers_derive_their_own_url_from_the_pod_ip() -> None:
    env = {
        **BASE,
        "PROXY_WORKERS": "4",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "POD_IP": "10.1.2.3",
        "GROUPCACHE_PEER_SECRET": "s",
        "TOKENCACHE_PROXY_WORKER": "3",
    }
    s = Settings.from_env(env)
    assert s.peer_discovery == "kubernetes"
    assert s.groupcache_self_url == "http://10.1.2.3:5003"
    assert s.groupcache_port.port == 5003


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROXY_WORKERS": "0"}, r"^PROXY_WORKERS: 0 is below the minimum 1"),
        ({"PROXY_WORKERS": "999"}, r"^PROXY_WORKERS: 999 is above the maximum 256"),
        ({"PROXY_WORKERS": "two"}, r"^PROXY_WORKERS: 'two' is not an integer"),
        ({"PROXY_WORKERS": "2", "LISTEN_ADDR": ":0"}, r"^PROXY_WORKERS: .*fixed port"),
        (
            {"PROXY_WORKERS": "2", "GROUPCACHE_PORT": ":65535"},
            r"^GROUPCACHE_PORT: .*65535\.\.65536",
        ),
        (
            {"PROXY_WORKERS": "2", "TOKENCACHE_PROXY_WORKER": "2"},
            r"^TOKENCACHE_PROXY_WORKER: 2 is not below 2",
        ),
        ({"TOKENCACHE_PROXY_WORKER": "x"}, r"^TOKENCACHE_PROXY_WORKER: 'x' is not an integer"),
    ],
)
def test_bad_worker_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**BASE, **env})


def test_the_default_is_one_worker_per_usable_cpu() -> None:
    s = Settings.from_env({"BACKEND_URL": "http://backend:9000"})
    cpu_max = Path(CGROUP_CPU_MAX)
    text = cpu_max.read_text() if cpu_max.exists() else None
    assert s.proxy_workers == cpus_from_cgroup(text, len(os.sched_getaffinity(0)))


def test_workers_on_a_pod_address_need_the_peer_secret() -> None:
    # One static peer URL but two workers: two peers on the pod's own address, so a secret.
    env = {
        **BASE,
        "PROXY_WORKERS": "2",
        "GROUPCACHE_PORT": ":5000",
        "GROUPCACHE_PEERS": "http://a:5000",
        "GROUPCACHE_SELF_URL": "http://a:5000",
    }
    with pytest.raises(ConfigError, match=r"^GROUPCACHE_PEER_SECRET: required"):
        Settings.from_env(env)
    # Alone (no peers at all), the workers talk on loopback and need none.
    alone = {**BASE, "PROXY_WORKERS": "2", "GROUPCACHE_PORT": ":5000", "PEER_DISCOVERY": "none"}
    assert Settings.from_env(alone).proxy_workers == 2


def test_unset_workers_with_a_system_chosen_port_are_one() -> None:
    env = {"BACKEND_URL": "http://backend:9000", "GROUPCACHE_PORT": "127.0.0.1:0"}
    assert Settings.from_env(env).proxy_workers == 1
    with pytest.raises(ConfigError, match=r"^GROUPCACHE_PORT: workers use ports"):
        Settings.from_env({**env, "PROXY_WORKERS": "2"})
