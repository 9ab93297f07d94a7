"""The proxy's request metrics: plain counters, exposed through a prometheus_client collector."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tokencache.proxy._metrics import DEFAULT_BUCKETS, ProxyMetrics


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(name, labels)


def test_histogram_buckets_count_and_sum():
    metrics = ProxyMetrics(buckets=(0.1, 1.0))
    registry = CollectorRegistry()
    registry.register(metrics.collector())
    for seconds in (0.05, 0.1, 0.5, 2.0):
        metrics.observe("GET", 200, "hit", seconds)
    labels = {"method": "GET", "status": "200", "outcome": "hit"}
    name = "http_server_requests_seconds"
    assert sample(registry, f"{name}_bucket", {**labels, "le": "0.1"}) == 2  # le is inclusive
    assert sample(registry, f"{name}_bucket", {**labels, "le": "1"}) == 3  # Go's spelling
    assert sample(registry, f"{name}_bucket", {**labels, "le": "+Inf"}) == 4
    assert sample(registry, f"{name}_count", labels) == 4
    assert sample(registry, f"{name}_sum", labels) == pytest.approx(2.65)


def test_counts_are_read_at_scrape_time():
    metrics = ProxyMetrics()
    registry = CollectorRegistry()
    registry.register(metrics.collector())
    labels = {"method": "POST", "status": "502", "outcome": "error"}
    assert sample(registry, "http_server_requests_seconds_count", labels) is None
    metrics.observe("POST", 502, "error", 0.01)
    assert sample(registry, "http_server_requests_seconds_count", labels) == 1
    metrics.observe("POST", 502, "error", 0.01)
    assert sample(registry, "http_server_requests_seconds_count", labels) == 2


def test_unknown_methods_fold_into_other():
    metrics = ProxyMetrics()
    for method in ("PURGE", "BREW", "X" * 50):
        metrics.observe(method, 405, "bypass", 0.001)
    metrics.observe("GET", 200, "hit", 0.001)
    assert metrics.count("OTHER", 405, "bypass") == 3
    text = generate_latest(_registry(metrics)).decode()
    assert "PURGE" not in text and "BREW" not in text
    assert 'method="OTHER"' in text


def test_namespace_prefixes_every_name():
    metrics = ProxyMetrics(namespace="kc")
    metrics.observe("GET", 200, "miss", 0.2)
    metrics.backend_error("timeout")
    registry = _registry(metrics)
    labels = {"method": "GET", "status": "200", "outcome": "miss"}
    assert sample(registry, "kc_http_server_requests_seconds_count", labels) == 1
    assert sample(registry, "kc_proxy_backend_errors_total", {"kind": "timeout"}) == 1


def test_backend_errors_have_bounded_kinds():
    metrics = ProxyMetrics()
    metrics.backend_error("connect")
    metrics.backend_error("something new")
    registry = _registry(metrics)
    assert sample(registry, "proxy_backend_errors_total", {"kind": "connect"}) == 1
    assert sample(registry, "proxy_backend_errors_total", {"kind": "other"}) == 1
    assert sample(registry, "proxy_backend_errors_total", {"kind": "timeout"}) == 0


def test_default_buckets_are_kubecaches():
    assert ProxyMetrics().buckets == DEFAULT_BUCKETS
    assert DEFAULT_BUCKETS[0] == 0.00001 and DEFAULT_BUCKETS[-1] == 1000.0
    assert len(DEFAULT_BUCKETS) == 22


def test_buckets_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        ProxyMetrics(buckets=(1.0, 1.0))


def _registry(metrics: ProxyMetrics) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(metrics.collector())
    return registry
