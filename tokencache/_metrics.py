"""Prometheus metrics for the engine, with golang/groupcache_exporter's names and labels.

The collector reads the plain-int counters at scrape time; nothing is updated per request.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._workspace import Workspace

_GROUP_COUNTERS = (
    ("gets", "gets", "Count of cache gets (including from peers, from either main or hot caches)"),
    ("hits", "cache_hits", "Count of cache hits (from either main or hot caches)"),
    ("peer_loads", "peer_loads", "Count of non-error loads or cache hits from peers (remote load)"),
    ("peer_errors", "peer_errors", "Count of errors from peers"),
    ("loads", "loads", "Count of gets that missed both caches (before singleflight)"),
    ("loads_deduped", "loads_deduped", "Count of loads after singleflight"),
    ("local_load", "local_loads", "Count of loads from the local loader that succeeded"),
    ("local_load_errs", "local_load_errs", "Count of loads from the local loader that failed"),
    ("server_requests", "server_requests", "Count of gets received from peers"),
    (
        "crosstalk_refusals",
        "crosstalk_refusals",
        "Count of peer requests for keys this process does not own, loaded here, not forwarded",
    ),
    (
        "local_load_markers",
        "local_load_markers",
        "Count of loads that produced a marker record (stored, not a value)",
    ),
    (
        "handoff_hits",
        "handoff_hits",
        "Count of loads avoided after a ring change: a previous owner or hot copy had the key",
    ),
    ("handoffs_received", "handoffs_received", "Count of entries handed over by leaving peers"),
    ("lookups_served", "lookups_served", "Count of peers' cache lookups answered here"),
    (
        "hot_admissions",
        "hot_admissions",
        "Count of values fetched from their owner that the admission policy kept as hot copies",
    ),
    (
        "hot_rejections",
        "hot_rejections",
        "Count of values fetched from their owner that the admission policy did not keep",
    ),
)

_CACHE_COUNTERS = (
    ("gets", "Count of cache gets"),
    ("hits", "Count of cache hits"),
    ("evictions", "Count of cache evictions"),
    ("evictions_nonexpired", "Count of evictions of entries that had not expired"),
)


class GroupcacheCollector(Collector):
    """Exposes every group of a workspace as ``[namespace_]groupcache_*`` metrics."""

    def __init__(self, workspace: Workspace, namespace: str = "") -> None:
        self._ws = workspace
        self._prefix = f"{namespace}_groupcache_" if namespace else "groupcache_"
        self._own_prefix = f"{namespace}_tokencache_" if namespace else "tokencache_"

    def describe(self) -> list[Metric]:
        """Nothing up front: the families are built at collect time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Build the metric families from the current counters."""
        p = self._prefix
        groups = sorted(self._ws.groups.values(), key=lambda g: g.name)
        for metric, attr, doc in _GROUP_COUNTERS:
            family = CounterMetricFamily(p + metric, doc, labels=["group"])
            for group in groups:
                family.add_metric([group.name], getattr(group.stats, attr))
            yield family
        slowest = GaugeMetricFamily(
            p + "get_from_peers_latency_slowest_milliseconds",
            "Slowest get from a peer, in milliseconds",
            labels=["group"],
        )
        for group in groups:
            slowest.add_metric([group.name], group.stats.get_from_peers_latency_slowest_ms)
        yield slowest
        # A ratio as well as the counters (hits / gets of type="hot"): the one figure an operator
        # checks to see whether hot copies stick; since start, so it is meaningful between scrapes.
        hot_ratio = GaugeMetricFamily(
            p + "hot_hit_ratio",
            "Share of lookups that missed the main cache and were served by a hot copy",
            labels=["group"],
        )
        for group in groups:
            hot = group.hot_cache.stats
            hot_ratio.add_metric([group.name], hot.hits / hot.gets if hot.gets else 0.0)
        yield hot_ratio
        cache_bytes = GaugeMetricFamily(p + "cache_bytes", "Bytes held", labels=["group", "type"])
        cache_items = GaugeMetricFamily(p + "cache_items", "Items held", labels=["group", "type"])
        counters = {
            name: CounterMetricFamily(p + "cache_" + name, doc, labels=["group", "type"])
            for name, doc in _CACHE_COUNTERS
        }
        for group in groups:
            for kind, cache in (("main", group.main_cache), ("hot", group.hot_cache)):
                cache_bytes.add_metric([group.name, kind], cache.bytes)
                cache_items.add_metric([group.name, kind], len(cache))
                for name, _ in _CACHE_COUNTERS:
                    counters[name].add_metric([group.name, kind], getattr(cache.stats, name))
        yield cache_bytes
        yield cache_items
        yield from counters.values()
        refused = CounterMetricFamily(
            self._own_prefix + "peer_requests_refused",
            "Peer requests refused before reaching a group (unauthenticated, malformed or busy)",
            labels=["reason"],
        )
        refused.add_metric(["unauthorized"], self._ws.server_stats.unauthorized)
        refused.add_metric(["bad_request"], self._ws.server_stats.bad_requests)
        refused.add_metric(["busy"], self._ws.server_stats.busy)
        yield refused
        yield from self._membership()

    def _membership(self) -> Iterator[Metric]:
        own = self._own_prefix
        membership = self._ws.membership
        ring = GaugeMetricFamily(own + "ring_peers", "Peers on this process's ring")
        ring.add_metric([], len(membership.peers))
        yield ring
        excluded = GaugeMetricFamily(
            own + "peers_excluded", "Members kept off the ring now", labels=["reason"]
        )
        exclusions = CounterMetricFamily(
            own + "peer_exclusions",
            "Times a member was taken off the ring (left: it announced leaving; unhealthy: "
            "failed health checks)",
            labels=["reason"],
        )
        now = membership.excluded
        for reason, count in sorted(membership.stats.exclusions.items()):
            excluded.add_metric([reason], sum(1 for r in now.values() if r == reason))
            exclusions.add_metric([reason], count)
        yield excluded
        yield exclusions
        rejoins = CounterMetricFamily(
            own + "peer_rejoins", "Times an excluded member was put back on the ring"
        )
        rejoins.add_metric([], membership.stats.rejoins)
        yield rejoins
        report = self._ws.last_handoff
        if report is not None:
            handed = CounterMetricFamily(
                own + "handoff_entries",
                "Main-cache entries of this process's leave, by result",
                labels=["result"],
            )
            handed.add_metric(["sent"], report.entries_sent)
            handed.add_metric(["failed"], report.entries_failed)
            handed.add_metric(["left"], report.entries_left)
            yield handed
