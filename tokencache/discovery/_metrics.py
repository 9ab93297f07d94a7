"""What discovery counts: plain integers always, Prometheus metrics when a registry is given.

Metric names and meanings follow udhos/kubegroup so existing dashboards keep working (a
``namespace`` prefix, KUBEGROUP_METRICS_NAMESPACE in the proxy, gives ``{namespace}_kubegroup_peers``):

- ``kubegroup_peers``   gauge, pods matching the selector at the last update, ready or not (Go:
  the size of the pod list handed to its update callback; the ring holds only the ready ones)
- ``kubegroup_events``  Go's counter of peer updates, exported under Go's exact name (no
  ``_total``, so as an untyped sample: prometheus-client would append ``_total`` to a counter)
- ``kubegroup_ready_peers`` gauge, peers in the last delivered set (the ring)
- ``kubegroup_watch_events_total`` counter, pod watch events seen (ADDED, MODIFIED, DELETED)
- ``kubegroup_changes_total`` counter, peer-set changes handed to ``on_peers``
- ``kubegroup_errors``  counter by ``reason`` (a small fixed set: unauthorized, forbidden,
  expired, timeout, connection, api, other), list/watch failures

Labels are bounded and carry no pod names, addresses or tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

ERROR_REASONS = ("api", "connection", "expired", "forbidden", "other", "timeout", "unauthorized")


@dataclass
class DiscoveryStats:
    """Counters of one peer source (a snapshot copy is returned to readers)."""

    lists: int = 0  # list requests that returned a pod list
    watches: int = 0  # watch requests that were answered 200
    events: int = 0  # pod watch events seen
    changes: int = 0  # peer-set changes delivered to on_peers
    errors: int = 0  # failed list/watch attempts, all reasons
    expired: int = 0  # 410 Gone answers (each leads to a re-list)
    watch_timeouts: int = 0  # watches that went silent past the read timeout
    peers: int = 0  # size of the last delivered set
    pods: int = 0  # pods matching the selector at the last delivery, ready or not
    seen_pods: int = 0  # pods the watch knows now (set by the watch thread)
    last_error: str | None = None  # "unauthorized (401)" and the like; never a body or header


class Recorder:
    """Updates :class:`DiscoveryStats` and, when configured, the Prometheus metrics.

    Called from the watch thread and the event loop, so updates take a lock.
    """

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "") -> None:
        self._lock = threading.Lock()  # protects _stats
        self._stats = DiscoveryStats()
        self._events: Counter | None = None
        self._changes: Counter | None = None
        self._errors: Counter | None = None
        if registry is not None:
            registry.register(_GoNames(self, f"{namespace}_" if namespace else ""))
            self._events = Counter(
                "kubegroup_watch_events",
                "Pod watch events seen by Kubernetes discovery.",
                namespace=namespace,
                registry=registry,
            )
            self._changes = Counter(
                "kubegroup_changes",
                "Peer-set changes applied by Kubernetes discovery.",
                namespace=namespace,
                registry=registry,
            )
            self._errors = Counter(
                "kubegroup_errors",
                "Kubernetes API list/watch failures by reason.",
                ["reason"],
                namespace=namespace,
                registry=registry,
            )
            for reason in ERROR_REASONS:
                self._errors.labels(reason=reason)  # export zeros so alerts see the series

    def snapshot(self) -> DiscoveryStats:
        """Return a copy of the counters."""
        with self._lock:
            return DiscoveryStats(**vars(self._stats))

    def listed(self) -> None:
        with self._lock:
            self._stats.lists += 1

    def watched(self) -> None:
        with self._lock:
            self._stats.watches += 1

    def event(self) -> None:
        with self._lock:
            self._stats.events += 1
        if self._events is not None:
            self._events.inc()

    def seen(self, pods: int) -> None:
        """The watch's pod count now (ready or not); reported at the next delivery."""
        with self._lock:
            self._stats.seen_pods = pods

    def changed(self, peers: int) -> None:
        with self._lock:
            self._stats.changes += 1
            self._stats.peers = peers
            self._stats.pods = max(self._stats.seen_pods, peers)
        if self._changes is not None:
            self._changes.inc()

    def failed(self, reason: str, detail: str) -> None:
        if reason not in ERROR_REASONS:
            reason = "other"
        with self._lock:
            self._stats.errors += 1
            self._stats.expired += reason == "expired"
            self._stats.watch_timeouts += reason == "timeout"
            self._stats.last_error = detail
        if self._errors is not None:
            self._errors.labels(reason=reason).inc()


class _GoNames(Collector):
    """``kubegroup_peers`` and ``kubegroup_events`` with kubegroup's names, read at scrape time."""

    def __init__(self, recorder: Recorder, prefix: str) -> None:
        self._recorder = recorder
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        stats = self._recorder.snapshot()
        peers = GaugeMetricFamily(
            f"{self._prefix}kubegroup_peers", "Number of peer PODs discovered."
        )
        peers.add_metric([], float(stats.pods))
        yield peers
        ready = GaugeMetricFamily(
            f"{self._prefix}kubegroup_ready_peers",
            "Peers in the ring discovery delivered last (ready pods with an IP).",
        )
        ready.add_metric([], float(stats.peers))
        yield ready
        events = UnknownMetricFamily(
            f"{self._prefix}kubegroup_events", "Number of events received (peer updates)."
        )
        events.add_metric([], float(stats.changes))
        yield events
