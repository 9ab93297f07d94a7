"""KubernetesPeerSource with the unmodified kubernetes client against the fake API over https.

Short timeouts keep the file fast: each watch ends server-side after 1 s, a watch silent for
0.6 s is cut by the client, and the fake sends a bookmark every 0.2 s (as kube-apiserver does,
less often) so a healthy quiet watch is never mistaken for a dead one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from prometheus_client import CollectorRegistry

import tokencache
from tests.support.fake_kube import FakeKube, parse_selector
from tokencache.discovery import DiscoveryConfigError, KubernetesPeerSource

LABELS = {"app": "tc"}
SELECTOR = "app=tc"
DEADLINE = 15.0  # bound of every wait; the expected path takes well under a second or two


def url(ip: str) -> str:
    return f"http://{ip}:5000"


class PeerCalls:
    """An on_peers callback that records its calls and the thread they ran on."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[int] = set()

    def __call__(self, peers: list[str]) -> None:
        self.calls.append(list(peers))
        self.threads.add(threading.get_ident())

    @property
    def last(self) -> list[str] | None:
        return self.calls[-1] if self.calls else None


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until true, bounded by DEADLINE."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeKube]:
    kube = FakeKube(tmp_path, namespace="team", bookmark_interval=0.2)
    kube.start()
    try:
        yield kube
    finally:
        kube.stop()


@pytest.fixture
def api_client(fake: FakeKube) -> Iterator[k8s_client.ApiClient]:
    client = fake.api_client()
    try:
        yield client
    finally:
        client.close()


MakeSource = Callable[..., KubernetesPeerSource]


@pytest.fixture
async def make_source(api_client: k8s_client.ApiClient) -> AsyncIterator[MakeSource]:
    made: list[KubernetesPeerSource] = []

    def make(on_peers: Callable[[list[str]], None], **overrides: Any) -> KubernetesPeerSource:
        settings: dict[str, Any] = {
            "namespace": "team",
            "label_selector": SELECTOR,
            "peer_port": ":5000",
            "debounce": 0.05,
            "watch_timeout": 1,
            "read_timeout": 0.6,
            "backoff": (0.05, 0.2),
            "api_client": api_client,
        }
        settings.update(overrides)
        source = KubernetesPeerSource(on_peers, **settings)
        made.append(source)
        return source

    try:
        yield make
    finally:
        for source in made:
            async with asyncio.timeout(DEADLINE):
                await source.stop()


async def started(source: KubernetesPeerSource) -> KubernetesPeerSource:
    await source.start()
    async with asyncio.timeout(DEADLINE):
        await source.wait_synced()
    return source


async def test_ready_pods_become_peers_on_the_loop_thread(
    fake: FakeKube, make_source: MakeSource
) -> None:
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    fake.add_pod("b", ip="10.0.0.2", labels=LABELS, ready=False)
    fake.add_pod("other-app", ip="10.0.0.3", labels={"app": "other"})
    fake.add_pod("other-ns", ip="10.0.0.4", labels=LABELS, namespace="elsewhere")
    fake.add_pod("pending", ip=None, labels=LABELS)
    calls = PeerCalls()
    source = await started(make_source(calls))

    assert calls.calls == [[url("10.0.0.1")]]  # the first list, delivered at once
    fake.add_pod("c", ip="10.0.0.5", labels=LABELS)
    await eventually(lambda: calls.last == [url("10.0.0.1"), url("10.0.0.5")], "pod c added")
    fake.set_ip("pending", "10.0.0.6")
    await eventually(lambda: url("10.0.0.6") in (calls.last or []), "pending pod got its IP")

    assert calls.threads == {threading.get_ident()}  # on_peers ran on the event loop
    assert source.peers == calls.last
    assert source.stats.lists == 1


async def test_readiness_flips_and_deletions(fake: FakeKube, make_source: MakeSource) -> None:
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    fake.add_pod("b", ip="10.0.0.2", labels=LABELS, ready=False)
    calls = PeerCalls()
    await started(make_source(calls))
    assert calls.last == [url("10.0.0.1")]

    fake.set_ready("b", True)
    await eventually(lambda: calls.last == [url("10.0.0.1"), url("10.0.0.2")], "b ready")
    fake.set_ready("a", False)
    await eventually(lambda: calls.last == [url("10.0.0.2")], "a not ready")
    fake.set_ready("a", True)
    await eventually(lambda: calls.last == [url("10.0.0.1"), url("10.0.0.2")], "a ready again")
    fake.delete_pod("b")
    await eventually(lambda: calls.last == [url("10.0.0.1")], "b deleted")
    fake.set_labels("a", {"app": "moved"})  # leaves the selector: the watch says DELETED
    await eventually(lambda: calls.last == [], "a left the selector")


async def test_terminating_pod_leaves_at_once(fake: FakeKube, make_source: MakeSource) -> None:
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    fake.add_pod("b", ip="10.0.0.2", labels=LABELS)
    calls = PeerCalls()
    await started(make_source(calls))

    fake.mark_deleting("a")  # still Ready=True and still listed, but shutting down
    await eventually(lambda: calls.last == [url("10.0.0.2")], "terminating pod removed")
    assert len(calls.calls) == 2


async def test_410_relists_and_rebuilds_the_whole_set(
    fake: FakeKube, make_source: MakeSource
) -> None:
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    fake.add_pod("b", ip="10.0.0.2", labels=LABELS)
    calls = PeerCalls()
    source = await started(make_source(calls, read_timeout=5.0))
    await eventually(lambda: fake.active_watches() == 1, "watch open")

    # The watch falls behind (its stream is silent), the changes happen, and the history that
    # held them is compacted: the events are lost, so only a re-list can show the new set.
    assert fake.stall_watches() == 1
    fake.add_pod("c", ip="10.0.0.3", labels=LABELS)
    fake.delete_pod("a")
    fake.compact()
    fake.unstall()

    await eventually(lambda: calls.last == [url("10.0.0.2"), url("10.0.0.3")], "re-listed set")
    assert source.stats.expired >= 1
    assert fake.requests()["list"] >= 2

    # And a forced 410 on a healthy watch: re-list, same set, no spurious on_peers call.
    before_lists, before_calls = fake.requests()["list"], len(calls.calls)
    fake.force_410()
    await eventually(lambda: fake.requests()["list"] > before_lists, "re-list after 410")
    fake.add_pod("d", ip="10.0.0.4", labels=LABELS)
    await eventually(lambda: url("10.0.0.4") in (calls.last or []), "changes after re-list")
    assert len(calls.calls) == before_calls + 1


async def test_silent_watch_is_cut_by_read_timeout_and_resumed(
    fake: FakeKube, make_source: MakeSource
) -> None:
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    calls = PeerCalls()
    source = await started(make_source(calls, watch_timeout=30))
    await eventually(lambda: fake.active_watches() == 1, "watch open")
    watches_before = fake.requests()["watch"]

    assert fake.stall_watches() == 1  # connection stays open, nothing is sent, not even bookmarks
    fake.add_pod("b", ip="10.0.0.2", labels=LABELS)

    await eventually(lambda: calls.last == [url("10.0.0.1"), url("10.0.0.2")], "b via new watch")
    assert source.stats.watch_timeouts >= 1
    assert fake.requests()["watch"] > watches_before
    assert fake.requests()["list"] == 1  # resumed from the last version, not re-listed
    fake.add_pod("c", ip="10.0.0.3", labels=LABELS)
    await eventually(lambda: url("10.0.0.3") in (calls.last or []), "later changes")


async def test_watch_that_ends_resumes_from_the_last_version(
    fake: FakeKube, make_source: MakeSource
) -> None:
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    calls = PeerCalls()
    source = await started(make_source(calls, read_timeout=5.0))
    fake.add_pod("b", ip="10.0.0.2", labels=LABELS)
    fake.add_pod("unrelated", ip="10.0.0.9", labels={"app": "other"})  # moves the version only

    await eventually(lambda: fake.requests().get("watch", 0) >= 3, "three watches (1 s each)")
    versions = [int(v) for v in fake.watch_versions()]
    assert versions == sorted(versions)
    assert versions[-1] >= 1003  # b and the unrelated pod: bookmarks carried the version
    assert fake.requests()["list"] == 1
    assert source.stats.errors == 0
    assert calls.last == [url("10.0.0.1"), url("10.0.0.2")]


async def test_api_down_keeps_last_peers_and_recovers(
    fake: FakeKube, make_source: MakeSource
) -> None:
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    fake.add_pod("b", ip="10.0.0.2", labels=LABELS)
    calls = PeerCalls()
    source = await started(make_source(calls))
    errors_before = source.stats.errors

    fake.go_down()
    await eventually(lambda: source.stats.errors >= errors_before + 3, "retries while down")
    assert source.peers == [url("10.0.0.1"), url("10.0.0.2")]
    assert [] not in calls.calls
    assert len(calls.calls) == 1

    fake.come_back()
    fake.add_pod("c", ip="10.0.0.3", labels=LABELS)
    await eventually(lambda: url("10.0.0.3") in (calls.last or []), "changes after recovery")
    assert calls.last == [url("10.0.0.1"), url("10.0.0.2"), url("10.0.0.3")]
    assert "unreachable" in (source.stats.last_error or "")


async def test_debounce_turns_a_burst_into_one_call(
    fake: FakeKube, make_source: MakeSource
) -> None:
    calls = PeerCalls()
    source = await started(make_source(calls, debounce=1.0))
    assert calls.calls == [[]]

    expected = [url(f"10.0.1.{i}") for i in range(10)]
    for i in range(10):
        fake.add_pod(f"p{i}", ip=f"10.0.1.{i}", labels=LABELS)
    await eventually(lambda: source.stats.events >= 10, "ten events seen")
    await eventually(lambda: len(calls.calls) == 2, "the debounced call")
    assert calls.calls[1] == sorted(expected)
    assert source.stats.changes == 2


async def test_wrong_token_is_reported_and_retried_without_crashing(
    fake: FakeKube, make_source: MakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    wrong_token = "wrong-token-9f8e7d"
    bad_client = fake.api_client(token=wrong_token)
    registry = CollectorRegistry()
    calls = PeerCalls()
    try:
        source = make_source(
            calls, api_client=bad_client, registry=registry, metrics_namespace="proxy"
        )
        await source.start()
        await eventually(lambda: fake.requests().get("unauthorized", 0) >= 3, "retried 401s")
        await eventually(
            lambda: (
                (
                    registry.get_sample_value(
                        "proxy_kubegroup_errors_total", {"reason": "unauthorized"}
                    )
                    or 0
                )
                >= 3
            ),
            "401s counted in the metric",
        )
        assert "401" in (source.stats.last_error or "")
        assert calls.calls == []
        await source.stop()
    finally:
        bad_client.close()
    assert "401" in caplog.text
    assert wrong_token not in caplog.text
    assert fake.token not in caplog.text


async def test_metrics_follow_the_delivered_set(fake: FakeKube, make_source: MakeSource) -> None:
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    registry = CollectorRegistry()
    calls = PeerCalls()
    await started(make_source(calls, registry=registry))
    assert registry.get_sample_value("kubegroup_peers") == 1
    fake.add_pod("b", ip="10.0.0.2", labels=LABELS)
    await eventually(lambda: registry.get_sample_value("kubegroup_peers") == 2, "gauge")
    assert registry.get_sample_value("kubegroup_changes_total") == 2
    assert (registry.get_sample_value("kubegroup_watch_events_total") or 0) >= 1


async def test_stop_is_prompt_and_final(fake: FakeKube, make_source: MakeSource) -> None:
    calls = PeerCalls()
    source = await started(make_source(calls, watch_timeout=30, read_timeout=30.0))
    await eventually(lambda: fake.active_watches() == 1, "watch open")
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.timeout(5):  # far below the 30 s read timeout: abort() woke the reader
        await source.stop()
    stopped_in = loop.time() - began
    fake.add_pod("late", ip="10.0.0.7", labels=LABELS)
    await eventually(lambda: fake.active_watches() == 0, "watch closed")
    assert calls.calls == [[]]
    assert stopped_in < 5


def test_fake_selector_forms() -> None:
    sel = parse_selector("app=tc,tier in (a, b),!canary,zone!=x,track")
    assert sel({"app": "tc", "tier": "a", "zone": "y", "track": ""})
    assert not sel({"app": "tc", "tier": "c", "zone": "y", "track": ""})
    assert not sel({"app": "tc", "tier": "a", "zone": "y", "track": "", "canary": "1"})
    assert not sel({"app": "tc", "tier": "b", "zone": "x", "track": ""})
    assert not sel({"app": "tc", "tier": "b", "zone": "y"})
    assert parse_selector("")({"anything": "1"})
    assert parse_selector("env notin (prod)")({"env": "dev"})


async def test_without_a_client_it_needs_a_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("team-b\n")
    source = KubernetesPeerSource(
        PeerCalls(), label_selector=SELECTOR, peer_port=5000, namespace_file=namespace_file
    )
    assert source.namespace == "team-b"
    with pytest.raises(DiscoveryConfigError, match="pod"):
        await source.start()
    await source.stop()
    with pytest.raises(RuntimeError, match="new one"):
        await source.start()


async def test_feeds_a_workspace_ring(fake: FakeKube, make_source: MakeSource) -> None:
    ws = tokencache.Workspace(self_url=url("10.0.0.1"))
    try:
        fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
        fake.add_pod("b", ip="10.0.0.2", labels=LABELS)
        source = await started(make_source(ws.set_peers))
        assert ws.peers == (url("10.0.0.1"), url("10.0.0.2"))
        fake.mark_deleting("b")
        await eventually(lambda: ws.peers == (url("10.0.0.1"),), "ring lost b")
        assert source.peers == [url("10.0.0.1")]
    finally:
        await ws.close()


async def test_every_worker_of_every_ready_pod_is_a_peer(
    fake: FakeKube, make_source: MakeSource
) -> None:
    fake.add_pod("a", ip="10.0.0.1", labels=LABELS)
    fake.add_pod("b", ip="10.0.0.2", labels=LABELS, annotations={"tokencache.io/workers": "3"})
    fake.add_pod("c", ip="10.0.0.3", labels=LABELS, ready=False)
    calls = PeerCalls()
    await started(make_source(calls, workers=2))
    assert calls.last == [
        "http://10.0.0.1:5000",
        "http://10.0.0.1:5001",
        "http://10.0.0.2:5000",
        "http://10.0.0.2:5001",
        "http://10.0.0.2:5002",
    ]
    fake.set_ready("c", True)
    await eventually(
        lambda: {"http://10.0.0.3:5000", "http://10.0.0.3:5001"} <= set(calls.last or []),
        "pod c's two workers joined",
    )
    fake.mark_deleting("b")
    await eventually(
        lambda: not any("10.0.0.2" in u for u in calls.last or []), "all of b's workers left"
    )
    assert len(calls.last or []) == 4
