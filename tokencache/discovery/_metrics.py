"""What discovery counts: plain integers always, Prometheus metrics when a registry is given.

Metric names follow udhos/kubegroup so existing dashboards keep working (a ``namespace`` prefix
gives ``{namespace}_kubegroup_peers``; prometheus-client adds ``_total`` to counters):

- ``kubegroup_peers``   gauge, peers in the last delivered set
- ``kubegroup_events``  counter, pod watch events seen (ADDED, MODIFIED, DELETED; not bookmarks)
- ``kubegroup_changes`` counter, peer-set changes handed to ``on_peers``
- ``kubegroup_errors``  counter by ``reason`` (a small fixed set: unauthorized, forbidden,
  expired, timeout, connection, api, other), list/watch failures

Labels are bounded and carry no pod names, addresses or tokens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

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
    last_error: str | None = None  # "unauthorized (401)" and the like; never a body or header


class Recorder:
    """Updates :class:`DiscoveryStats` and, when configured, the Prometheus metrics.

    Called from the watch thread and the event loop, so updates take a lock.
    """

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "") -> None:
        self._lock = threading.Lock()  # protects _stats
        self._stats = DiscoveryStats()
        self._peers: Gauge | None = None
        self._events: Counter | None = None
        self._changes: Counter | None = None
        self._errors: Counter | None = None
        if registry is not None:
            self._peers = Gauge(
                "kubegroup_peers",
                "Peers found by Kubernetes discovery.",
                namespace=namespace,
                registry=registry,
            )
            self._events = Counter(
                "kubegroup_events",
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

    def changed(self, peers: int) -> None:
        with self._lock:
            self._stats.changes += 1
            self._stats.peers = peers
        if self._changes is not None and self._peers is not None:
            self._changes.inc()
            self._peers.set(peers)

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
