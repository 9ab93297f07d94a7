"""The proxy's request metrics: plain integers on the hot path, Prometheus at scrape time.

Theory of operation. `ProxyMetrics.observe` is called once per response (every response: hits,
misses, bypasses, faults, aborted relays), on the hit path too, so it does the least it can: two
dict lookups and one `bisect` into the bucket bounds, then an int and a float addition. No
prometheus_client object is touched until a scrape, when `ProxyMetrics.collector()` folds the
counts into two cumulative histograms:

- ``{namespace}_requests_seconds{method,status,uri,outcome}``: kubecache's histogram (name,
  labels, buckets and outcome values ``SUCCESS`` (2xx), ``CLIENT_ERROR`` (any other status below
  500, as kubecache's ``isHTTPError`` had it) and ``SERVER_ERROR`` (5xx or a backend fault)), so a
  kubecache dashboard or alert keeps working;
- ``{namespace}_http_server_requests_seconds{method,status,outcome}``: the project's own, with
  the cache outcome ``hit|miss|bypass|stale|error`` (no ``uri``).

Labels stay bounded. kubecache's ``uri`` was the whole request URI, query included: one series per
distinct URL. Here ``uri`` is the request path without the query, and only the first
``uri_limit`` distinct paths (METRICS_URI_LIMIT, default 100) answered with a status below 400 get
a series of their own; every later path is counted as ``uri="OTHER"``. An error answer never
claims a slot (a scanner's 404s would otherwise take every slot at start-up and leave the real
routes ``OTHER`` until a restart): on a path without a slot it is ``uri="NOT_FOUND"`` for a 404
(Spring's name) and ``uri="OTHER"`` otherwise. The table from request-target to label is itself capped
and cleared when full, so memory stays bounded whatever clients send. Method is one of the known
methods or ``OTHER``, status is the numeric code (a few dozen values at most).
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "DEFAULT_BUCKETS",
    "KUBECACHE_OUTCOMES",
    "OUTCOMES",
    "ProxyMetrics",
    "Series",
    "kubecache_outcome",
]

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
KUBECACHE_OUTCOMES = ("SUCCESS", "CLIENT_ERROR", "SERVER_ERROR")
OTHER_URI = "OTHER"
NOT_FOUND_URI = "NOT_FOUND"
_TARGETS_MAX = 4096  # request-targets remembered for their uri label before the table is cleared


def kubecache_outcome(status: int, outcome: str) -> str:
    """kubecache's ``outcome`` label for a response (its ``outcomeFrom``)."""
    if outcome == "error" or 500 <= status < 600:
        return "SERVER_ERROR"
    if status < 200 or status > 299:
        return "CLIENT_ERROR"
    return "SUCCESS"


_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)


class Series:
    """One label combination: non-cumulative bucket counts (last slot = +Inf), count and sum."""

    __slots__ = ("bounds", "buckets", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one response that took `seconds`."""
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


class ProxyMetrics:
    """Request counters of one proxy process: the two histograms (module docstring),
    ``{namespace}_proxy_backend_errors_total{kind}``, ``{namespace}_proxy_refused_requests_total
    {reason}`` (requests the public port or the loader refused as malformed or not allowed) and
    ``{namespace}_proxy_internal_errors_total`` (handler exceptions caught at the listener's
    boundary: always a bug).
    """

    def __init__(
        self,
        namespace: str = "",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        *,
        uri_limit: int = 100,
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError("buckets must be strictly increasing")
        self._bounds = bounds
        self._prefix = f"{namespace}_" if namespace else ""
        self._uri_limit = uri_limit
        self._uris: set[str] = set()  # paths that have a uri label of their own
        self._targets: dict[str, str] = {}  # request-target -> uri label (capped, see above)
        self._series: dict[tuple[str, int, str, str], Series] = {}
        self.backend_errors: dict[str, int] = {"connect": 0, "timeout": 0, "other": 0, "token": 0}
        self.refused_requests: dict[str, int] = {}
        self.internal_errors = 0

    @property
    def buckets(self) -> tuple[float, ...]:
        """The bucket upper bounds (seconds), +Inf excluded."""
        return self._bounds

    def uri_label(self, target: str, status: int = 200) -> str:
        """The bounded ``uri`` label of a request-target: its path, or ``OTHER`` past the cap;
        an error `status` (400 and above) only reuses a path's label, never claims one."""
        label = self._targets.get(target)
        if label is not None:
            return label
        path = target.split("?", 1)[0]
        if status >= 400 and path not in self._uris:
            return NOT_FOUND_URI if status == 404 else OTHER_URI  # not remembered: bounded
        if path in self._uris or len(self._uris) < self._uri_limit:
            self._uris.add(path)
            label = path
        else:
            label = OTHER_URI
        if len(self._targets) >= _TARGETS_MAX:
            self._targets.clear()
        self._targets[target] = label
        return label

    def observe(
        self, method: str, status: int, outcome: str, seconds: float, target: str = ""
    ) -> None:
        """Count one response. `method` is folded to ``OTHER`` when it is not a known one;
        `target` (the request-target) gives the ``uri`` label."""
        self.series(method, status, outcome, target).observe(seconds)

    def series(self, method: str, status: int, outcome: str, target: str = "") -> Series:
        """The series `observe` counts these labels in (for a caller that counts the same
        labels often: the ready hits)."""
        uri = self._targets.get(target)
        if uri is None:
            uri = self.uri_label(target, status)
        key = (method, status, outcome, uri)
        series = self._series.get(key)
        if series is None:
            if method not in _METHODS:
                key = ("OTHER", status, outcome, uri)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series(self._bounds)
        return series

    def backend_error(self, kind: str) -> None:
        """Count one backend fault: ``connect``, ``timeout``, ``token`` (no OAuth2 token for the
        backend request) or ``other``."""
        self.backend_errors[kind if kind in self.backend_errors else "other"] += 1

    def refused(self, reason: str) -> None:
        """Count one refused request; `reason` is one of a small fixed set of labels."""
        self.refused_requests[reason] = self.refused_requests.get(reason, 0) + 1

    def internal_error(self) -> None:
        """Count one exception caught at the listener's boundary."""
        self.internal_errors += 1

    def count(self, method: str, status: int, outcome: str) -> int:
        """How many responses were observed with these labels (for tests and debugging)."""
        return sum(
            sum(series.buckets)
            for (m, st, out, _), series in self._series.items()
            if (m, st, out) == (method, status, outcome)
        )

    def collector(self) -> Collector:
        """A prometheus_client collector reading these counters at scrape time."""
        return _Collector(self)

    def _histogram(
        self,
        name: str,
        doc: str,
        labels: list[str],
        fold: Callable[[tuple[str, int, str, str]], tuple[str, ...]],
    ) -> HistogramMetricFamily:
        merged: dict[tuple[str, ...], tuple[list[int], float]] = {}
        for key, series in self._series.items():
            labels_of = fold(key)
            counts, total = merged.get(labels_of, ([0] * len(series.buckets), 0.0))
            merged[labels_of] = (
                [a + b for a, b in zip(counts, series.buckets, strict=True)],
                total + series.total,
            )
        hist = HistogramMetricFamily(f"{self._prefix}{name}", doc, labels=labels)
        for labels_of, (counts, total) in sorted(merged.items()):
            cumulative, acc = [], 0
            for bound, n in zip((*self._bounds, float("inf")), counts, strict=True):
                acc += n
                cumulative.append((_bound_text(bound), float(acc)))
            hist.add_metric(list(labels_of), cumulative, total)
        return hist

    def _families(self) -> Iterator[Metric]:
        yield self._histogram(
            "requests_seconds",
            "Spring-like server request duration in seconds (kubecache's histogram).",
            ["method", "status", "uri", "outcome"],
            lambda k: (k[0], str(k[1]), k[3], kubecache_outcome(k[1], k[2])),
        )
        yield self._histogram(
            "http_server_requests_seconds",
            "Server request duration in seconds by cache outcome (hit|miss|bypass|stale|error).",
            ["method", "status", "outcome"],
            lambda k: (k[0], str(k[1]), k[2]),
        )
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
    """A bucket bound as Go's client writes it (strconv 'g', shortest): ``1``, ``2.5``,
    ``1e-05``, ``1e+06``; Python's would be ``1.0``, so a kubecache query on ``le="1"`` keeps
    matching (Prometheus 3 normalises both to the same value on ingestion)."""
    if bound == float("inf"):
        return "+Inf"
    if bound == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(bound)).normalize().as_tuple()
    assert isinstance(exponent, int)  # finite
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    exp = point - 1
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:  # Go: %e when the exponent is < -4 or >= 6 (shortest precision)
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{minus}{text}{'0' * (point - len(text))}"
    return f"{minus}{text[:point]}.{text[point:]}"


class _Collector(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._families()
