"""The proxy's request metrics: plain integers on the hot path, Prometheus at scrape time.

Theory of operation. `ProxyMetrics.observe` is called once per response, on the hit path too, so it
does the least it can: one dict lookup by a (method, status, outcome) tuple and one `bisect` into the
bucket bounds, then two int/float additions. No prometheus_client object is touched until a scrape,
when `ProxyMetrics.collector()` turns the counts into a cumulative histogram family.

Labels stay bounded (kubecache's ``uri`` label was not): method is one of the known methods or
``OTHER``, status is the numeric code (a few dozen values at most), outcome is one of
``hit|miss|bypass|stale|error``.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DEFAULT_BUCKETS", "OUTCOMES", "ProxyMetrics"]

# kubecache's METRICS_BUCKETS_LATENCY_HTTP default, in seconds.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.00001,
    0.000025,
    0.00005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
)

OUTCOMES = ("hit", "miss", "bypass", "stale", "error")

_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)


class _Series:
    """One label combination: non-cumulative bucket counts (last slot = +Inf), count and sum."""

    __slots__ = ("buckets", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.total = 0.0


class ProxyMetrics:
    """Request counters of one proxy process.

    ``{namespace}_http_server_requests_seconds{method,status,outcome}`` (kubecache's name, without
    its ``uri`` label), ``{namespace}_proxy_backend_errors_total{kind}``,
    ``{namespace}_proxy_refused_requests_total{reason}`` (requests the public port or the loader
    refused as malformed or not allowed) and ``{namespace}_proxy_internal_errors_total`` (handler
    exceptions caught at the listener's boundary: always a bug).
    """

    def __init__(self, namespace: str = "", buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in buckets)
        if any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError("buckets must be strictly increasing")
        self._bounds = bounds
        self._prefix = f"{namespace}_" if namespace else ""
        self._series: dict[tuple[str, int, str], _Series] = {}
        self.backend_errors: dict[str, int] = {"connect": 0, "timeout": 0, "other": 0}
        self.refused_requests: dict[str, int] = {}
        self.internal_errors = 0

    @property
    def buckets(self) -> tuple[float, ...]:
        """The bucket upper bounds (seconds), +Inf excluded."""
        return self._bounds

    def observe(self, method: str, status: int, outcome: str, seconds: float) -> None:
        """Count one response. `method` is folded to ``OTHER`` when it is not a known one."""
        key = (method, status, outcome)
        series = self._series.get(key)
        if series is None:
            if method not in _METHODS:
                key = ("OTHER", status, outcome)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(len(self._bounds) + 1)
        series.buckets[bisect_left(self._bounds, seconds)] += 1
        series.total += seconds

    def backend_error(self, kind: str) -> None:
        """Count one backend fault: ``connect``, ``timeout`` or ``other``."""
        self.backend_errors[kind if kind in self.backend_errors else "other"] += 1

    def refused(self, reason: str) -> None:
        """Count one refused request; `reason` is one of a small fixed set of labels."""
        self.refused_requests[reason] = self.refused_requests.get(reason, 0) + 1

    def internal_error(self) -> None:
        """Count one exception caught at the listener's boundary."""
        self.internal_errors += 1

    def count(self, method: str, status: int, outcome: str) -> int:
        """How many responses were observed with these labels (for tests and debugging)."""
        series = self._series.get((method, status, outcome))
        return 0 if series is None else sum(series.buckets)

    def collector(self) -> Collector:
        """A prometheus_client collector reading these counters at scrape time."""
        return _Collector(self)

    def _families(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            f"{self._prefix}http_server_requests_seconds",
            "Server request duration in seconds (kubecache's histogram, no URI label).",
            labels=["method", "status", "outcome"],
        )
        for (method, status, outcome), series in sorted(self._series.items()):
            cumulative, acc = [], 0
            for bound, n in zip((*self._bounds, float("inf")), series.buckets, strict=True):
                acc += n
                cumulative.append((_bound_text(bound), float(acc)))
            hist.add_metric([method, str(status), outcome], cumulative, series.total)
        yield hist
        errors = CounterMetricFamily(
            f"{self._prefix}proxy_backend_errors",
            "Backend requests that failed without an HTTP response, by kind.",
            labels=["kind"],
        )
        for kind, n in sorted(self.backend_errors.items()):
            errors.add_metric([kind], float(n))
        yield errors
        refused = CounterMetricFamily(
            f"{self._prefix}proxy_refused_requests",
            "Requests refused as malformed or not allowed (public port, loader keys), by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(self.refused_requests.items()):
            refused.add_metric([reason], float(n))
        yield refused
        yield CounterMetricFamily(
            f"{self._prefix}proxy_internal_errors",
            "Exceptions caught at the listener's boundary (a bug; answered 500 or closed).",
            value=float(self.internal_errors),
        )


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _Collector(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._families()
