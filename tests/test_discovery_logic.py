"""Pure discovery logic: the peer rule, the pod table, debounce, backoff, local facts. No I/O."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import (
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodStatus,
)
from prometheus_client import CollectorRegistry

import tokencache.discovery as discovery
from tokencache.discovery import (
    Backoff,
    Debouncer,
    DiscoveryConfigError,
    PodTable,
    parse_port,
    peer_url,
    pod_peer,
    read_namespace,
    resource_version,
    self_address,
)
from tokencache.discovery._metrics import Recorder


def pod(
    name: str,
    ip: str | None = "10.0.0.1",
    *,
    ready: bool | None = True,
    deleting: bool = False,
    rv: str = "1",
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "ns", "resourceVersion": rv}
    if deleting:
        metadata["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": "Running"}
    if ip is not None:
        status["podIP"] = ip
    if ready is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ]
    return {"metadata": metadata, "status": status}


def test_exports_are_sorted_and_present() -> None:
    assert discovery.__all__ == sorted(discovery.__all__)
    for name in discovery.__all__:
        member = getattr(discovery, name)
        if callable(member):
            assert member.__doc__, name


# -- the peer rule -----------------------------------------------------------------------------


def test_ready_pod_with_ip_is_a_peer() -> None:
    assert pod_peer(pod("a", "10.1.2.3"), port=5000) == "http://10.1.2.3:5000"
    assert pod_peer(pod("a", "10.1.2.3"), port=443, scheme="https") == "https://10.1.2.3:443"


@pytest.mark.parametrize(
    "candidate",
    [
        pod("not-ready", ready=False),
        pod("no-conditions", ready=None),
        pod("no-ip", ip=None),
        pod("empty-ip", ip=""),
        pod("terminating", deleting=True),
    ],
    ids=lambda p: p["metadata"]["name"],
)
def test_pods_that_are_not_peers(candidate: dict[str, Any]) -> None:
    assert pod_peer(candidate, port=5000) is None


def test_ipv6_pod_ip_is_bracketed() -> None:
    assert pod_peer(pod("a", "fd00::7"), port=5000) == "http://[fd00::7]:5000"


def test_client_model_objects_follow_the_same_rule() -> None:
    ready = V1Pod(
        metadata=V1ObjectMeta(name="m", namespace="ns"),
        status=V1PodStatus(
            pod_ip="10.9.9.9", conditions=[V1PodCondition(type="Ready", status="True")]
        ),
    )
    assert pod_peer(ready, port=7000) == "http://10.9.9.9:7000"
    not_ready = V1Pod(
        metadata=V1ObjectMeta(name="m", namespace="ns"),
        status=V1PodStatus(
            pod_ip="10.9.9.9", conditions=[V1PodCondition(type="Ready", status="False")]
        ),
    )
    assert pod_peer(not_ready, port=7000) is None


@pytest.mark.parametrize(("given", "port"), [(5000, 5000), ("5000", 5000), (":8080", 8080)])
def test_parse_port(given: int | str, port: int) -> None:
    assert parse_port(given) == port


@pytest.mark.parametrize("bad", [0, 70000, "", ":", "http", "-1", ":50x"])
def test_parse_port_rejects(bad: int | str) -> None:
    with pytest.raises(DiscoveryConfigError):
        parse_port(bad)


def test_resource_version_of_lists_pods_and_bookmarks() -> None:
    assert resource_version({"metadata": {"resourceVersion": "77"}}) == "77"
    assert resource_version(pod("a", rv="12")) == "12"
    assert resource_version({"metadata": {}}) is None
    assert resource_version({}) is None


# -- the pod table -----------------------------------------------------------------------------


def test_table_list_then_events() -> None:
    table = PodTable(port=5000)
    assert table.replace([pod("b", "10.0.0.2"), pod("a", "10.0.0.1"), pod("c", ready=False)])
    assert table.peers() == ["http://10.0.0.1:5000", "http://10.0.0.2:5000"]

    assert table.apply("MODIFIED", pod("c", "10.0.0.3"))  # became ready
    assert table.peers()[-1] == "http://10.0.0.3:5000"
    assert table.apply("MODIFIED", pod("a", "10.0.0.1", deleting=True))  # terminating: out at once
    assert "http://10.0.0.1:5000" not in table.peers()
    assert not table.apply("DELETED", pod("a", "10.0.0.1", deleting=True))  # already out
    assert table.apply("DELETED", pod("b", "10.0.0.2"))
    assert table.peers() == ["http://10.0.0.3:5000"]
    assert len(table) == 1  # a and b deleted, c kept


def test_table_ignores_bookmarks_and_unchanged_modifications() -> None:
    table = PodTable(port=5000)
    table.replace([pod("a", "10.0.0.1")])
    assert not table.apply("BOOKMARK", {"metadata": {"resourceVersion": "9"}})
    assert not table.apply("MODIFIED", pod("a", "10.0.0.1", rv="2"))  # e.g. a label change
    assert not table.apply("ADDED", pod("x", ready=False))
    assert table.peers() == ["http://10.0.0.1:5000"]


def test_table_deduplicates_pods_sharing_an_ip() -> None:
    table = PodTable(port=5000)
    table.replace([pod("a", "10.0.0.1"), pod("b", "10.0.0.1")])
    assert table.peers() == ["http://10.0.0.1:5000"]
    assert not table.apply("DELETED", pod("a", "10.0.0.1"))  # b still holds the address
    assert table.peers() == ["http://10.0.0.1:5000"]


def test_replace_rebuilds_the_whole_set() -> None:
    table = PodTable(port=5000)
    table.replace([pod("a", "10.0.0.1"), pod("b", "10.0.0.2")])
    assert table.replace([pod("c", "10.0.0.3")])
    assert table.peers() == ["http://10.0.0.3:5000"]
    assert not table.replace([pod("c", "10.0.0.3")])


# -- debounce ----------------------------------------------------------------------------------


def test_first_list_is_delivered_at_once_then_only_changes() -> None:
    d = Debouncer(1.0)
    assert d.deliver_now(["a"]) == ["a"]
    assert d.deliver_now(["a"]) is None
    d.offer(["a"], now=5.0)  # unchanged: no burst opens
    assert d.deadline() is None


def test_burst_becomes_one_delivery_of_the_final_set() -> None:
    d = Debouncer(1.0)
    d.deliver_now([])
    deliveries = []
    now = 0.0
    for i in range(10):
        d.offer([f"p{j}" for j in range(i + 1)], now)
        now += 0.1
        if (out := d.poll(now)) is not None:
            deliveries.append(out)
    assert deliveries == []
    assert d.deadline() == pytest.approx(0.9 + 1.0)
    assert d.poll(1.89) is None
    assert d.poll(1.9) == [f"p{j}" for j in range(10)]
    assert d.deadline() is None
    assert d.delivered == tuple(f"p{j}" for j in range(10))


def test_burst_that_returns_to_the_delivered_set_delivers_nothing() -> None:
    d = Debouncer(1.0)
    d.deliver_now(["a", "b"])
    d.offer(["a"], 0.0)  # b flaps not-ready
    d.offer(["a", "b"], 0.5)  # and back
    assert d.poll(10.0) is None
    assert d.deadline() is None


def test_steady_trickle_is_delivered_by_max_delay() -> None:
    d = Debouncer(1.0, max_delay=3.0)
    d.deliver_now([])
    now = 0.0
    delivered = None
    while delivered is None and now < 10:
        d.offer([str(now)], now)
        now = round(now + 0.5, 1)
        delivered = d.poll(now)
    assert now == 3.0
    assert delivered == ["2.5"]


def test_zero_delay_delivers_on_the_next_poll() -> None:
    d = Debouncer(0.0)
    d.deliver_now([])
    d.offer(["a"], 3.0)
    assert d.poll(3.0) == ["a"]


# -- backoff -----------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_caps_and_resets() -> None:
    b = Backoff(0.5, 4.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(8)]
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
    assert len(set(delays)) == len(delays)  # jittered, not lock-step
    b.reset()
    assert b.next_delay() <= 0.5


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="backoff"):
        Backoff(2.0, 1.0)


# -- local facts -------------------------------------------------------------------------------


def test_read_namespace(tmp_path: Path) -> None:
    path = tmp_path / "namespace"
    path.write_text("team-a\n")
    assert read_namespace(path) == "team-a"
    with pytest.raises(DiscoveryConfigError):
        read_namespace(tmp_path / "missing")
    path.write_text("  \n")
    with pytest.raises(DiscoveryConfigError):
        read_namespace(path)


def test_self_address_prefers_pod_ip_then_resolves_hostname() -> None:
    looked_up: list[str] = []

    def resolve(name: str) -> str:
        looked_up.append(name)
        return "10.4.4.4"

    assert self_address("10.3.3.3", peer_port=":5000", resolve=resolve) == "http://10.3.3.3:5000"
    assert looked_up == []
    assert self_address("", peer_port=5000, hostname="pod-0", resolve=resolve) == (
        "http://10.4.4.4:5000"
    )
    assert looked_up == ["pod-0"]


def test_self_address_fails_loudly_when_unresolvable() -> None:
    def resolve(name: str) -> str:
        raise OSError("no such host")

    with pytest.raises(DiscoveryConfigError, match="pod-x"):
        self_address(None, peer_port=5000, hostname="pod-x", resolve=resolve)


def test_peer_url_and_self_address_agree() -> None:
    assert self_address("10.0.0.9", peer_port=5000) == peer_url("10.0.0.9", 5000)


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_registered_only_with_a_registry_and_prefixed() -> None:
    registry = CollectorRegistry()
    recorder = Recorder(registry, namespace="proxy")
    recorder.event()
    recorder.event()
    recorder.changed(3)
    recorder.failed("unauthorized", "API answered HTTP 401 Unauthorized")
    recorder.failed("weird", "x")
    value = registry.get_sample_value
    assert value("proxy_kubegroup_peers") == 3
    assert value("proxy_kubegroup_watch_events_total") == 2
    assert value("proxy_kubegroup_changes_total") == 1
    assert value("proxy_kubegroup_errors_total", {"reason": "unauthorized"}) == 1
    assert value("proxy_kubegroup_errors_total", {"reason": "other"}) == 1
    stats = recorder.snapshot()
    assert (stats.events, stats.changes, stats.errors, stats.peers) == (2, 1, 2, 3)

    plain = Recorder()  # no registry: counts in stats only, registers nothing
    plain.event()
    assert plain.snapshot().events == 1
