"""A kubecache dashboard or alert keeps working: /metrics of a real proxy against the Go anchors.

The anchors are the metric names and label sets of kubecache 0.13.1 (cmd/kubecache/metrics.go),
udhos/groupcache_exporter (exporter.go) and udhos/kubegroup (kubegroup/metrics.go), written out
here as data; the meanings checked are Go's: ``local_load`` counts loads that succeeded,
``local_load_errs`` loads that failed (a backend fault), ``METRICS_NAMESPACE`` prefixes
``requests_seconds`` and ``groupcache_*`` but not ``process_*``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.support.proxy_cluster import BackendProcess, ProxyCluster, http_get
from tokencache.discovery._metrics import Recorder
from tokencache.proxy._metrics import ProxyMetrics, kubecache_outcome

pytestmark = pytest.mark.slow

# name -> label names, Go's exposition (counters carry _total in the Go exporter's names).
GROUPCACHE_ANCHORS: dict[str, set[str]] = {
    **{
        f"groupcache_{n}_total": {"group"}
        for n in (
            "gets",
            "hits",
            "peer_loads",
            "peer_errors",
            "loads",
            "loads_deduped",
            "local_load",
            "local_load_errs",
            "server_requests",
            "crosstalk_refusals",
        )
    },
    "groupcache_get_from_peers_latency_slowest_milliseconds": {"group"},
    "groupcache_cache_bytes": {"group", "type"},
    "groupcache_cache_items": {"group", "type"},
    "groupcache_cache_gets_total": {"group", "type"},
    "groupcache_cache_hits_total": {"group", "type"},
    "groupcache_cache_evictions_total": {"group", "type"},
    "groupcache_cache_evictions_nonexpired_total": {"group", "type"},
}
REQUESTS_ANCHOR = ("requests_seconds", {"method", "status", "uri", "outcome"})


# kubecache's METRICS_BUCKETS_LATENCY_HTTP default as client_golang's text format writes `le`.
GO_LE = (
    *("1e-05", "2.5e-05", "5e-05", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1"),
    *("0.25", "0.5", "1", "2.5", "5", "10", "25", "50", "100", "250", "500", "1000", "+Inf"),
)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in found.get(name, []) if labels.items() <= got.items())


class _CloseBackend:
    """A backend that answers every request with ``Connection: close`` (HTTP/1.0 style)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = b"closing"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _CloseBackend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def node_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(metrics text, a path that was requested) of one proxy that saw a hit, a miss, a 404."""
    work: Path = tmp_path_factory.mktemp("kmetrics")
    path = f"/anchors/{uuid.uuid4().hex[:8]}"
    with (
        BackendProcess(work) as backend,
        ProxyCluster(2, backend.url, work, env={"METRICS_NAMESPACE": "kc"}) as cluster,
    ):
        node = cluster.nodes[0]
        for _ in range(2):
            assert httpx.get(node.url + path + "?a=1", timeout=10).status_code == 200
        assert httpx.get(node.url + path + "?status=404", timeout=10).status_code == 404
        assert httpx.get(node.url + path + "?status=503", timeout=10).status_code == 503
        status, body, _ = http_get(node.metrics_url)
        assert status == 200
        yield body.decode(), path


def test_requests_seconds_has_kubecaches_name_labels_and_outcomes(
    node_metrics: tuple[str, str],
) -> None:
    text, path = node_metrics
    found = samples(text)
    name, labels = REQUESTS_ANCHOR
    for suffix in ("_bucket", "_count", "_sum"):
        series = found[f"kc_{name}{suffix}"]
        extra = {"le"} if suffix == "_bucket" else set()
        assert {frozenset(lbl) for lbl, _ in series} == {frozenset(labels | extra)}
    count = f"kc_{name}_count"
    # uri is the path without the query; outcome is kubecache's, from the status.
    assert value(found, count, method="GET", status="200", uri=path, outcome="SUCCESS") == 2
    assert value(found, count, method="GET", status="404", uri=path, outcome="CLIENT_ERROR") == 1
    assert value(found, count, method="GET", status="503", uri=path, outcome="SERVER_ERROR") == 1
    # kubecache's default buckets, +Inf last, written as Go's client wrote them (text format
    # 0.0.4: strconv 'g'), so a kubecache query on le="1" or le="2.5" keeps matching.
    bounds = {lbl["le"] for lbl, _ in found[f"kc_{name}_bucket"]}
    assert bounds == set(GO_LE)
    assert 'le="1",' in text and 'le="1.0"' not in text


def test_project_cache_outcome_histogram_is_exported_alongside(
    node_metrics: tuple[str, str],
) -> None:
    found = samples(node_metrics[0])
    count = "kc_http_server_requests_seconds_count"
    assert value(found, count, outcome="hit") >= 1
    assert value(found, count, outcome="miss") >= 1
    assert all("uri" not in lbl for lbl, _ in found[count])


def test_groupcache_anchors_names_and_label_sets(node_metrics: tuple[str, str]) -> None:
    found = samples(node_metrics[0])
    for name, labels in GROUPCACHE_ANCHORS.items():
        series = found.get(f"kc_{name}")
        assert series, f"kc_{name} missing"
        assert {frozenset(lbl) for lbl, _ in series} == {frozenset(labels)}, name
    groups = {lbl["group"] for lbl, _ in found["kc_groupcache_gets_total"]}
    assert "path" in groups  # kubecache's group name
    assert {lbl["type"] for lbl, _ in found["kc_groupcache_cache_items"]} == {"main", "hot"}


def test_metrics_namespace_does_not_prefix_process_metrics(node_metrics: tuple[str, str]) -> None:
    found = samples(node_metrics[0])
    assert "process_cpu_seconds_total" in found
    assert not any(n.startswith("kc_process_") for n in found)


def test_local_load_counts_successes_and_errs_counts_backend_faults(tmp_path: Path) -> None:
    # A backend that is not listening: every load is a fault.
    with BackendProcess(tmp_path) as backend, ProxyCluster(1, backend.url, tmp_path) as cluster:
        node = cluster.nodes[0]
        assert httpx.get(node.url + "/ok", timeout=10).status_code == 200
        backend.stop()
        assert httpx.get(node.url + "/down", timeout=10).status_code == 502
        found = samples(http_get(node.metrics_url)[1].decode())
    assert value(found, "groupcache_local_load_total", group="path") == 1
    assert value(found, "groupcache_local_load_errs_total", group="path") == 1


def test_every_request_is_counted_even_bypassed_ones_the_backend_closes(tmp_path: Path) -> None:
    with _CloseBackend() as backend, ProxyCluster(1, backend.url, tmp_path) as cluster:
        node = cluster.nodes[0]
        n = 5
        for i in range(n):
            # POST is bypassed (not a cached method); the backend closes after each answer.
            r = httpx.post(node.url + f"/close/{i}", content=b"x", timeout=10)
            assert r.status_code == 200
        for i in range(n):
            assert httpx.get(node.url + f"/close-get/{i}", timeout=10).status_code == 200
        found = samples(http_get(node.metrics_url)[1].decode())
    assert value(found, "requests_seconds_count", method="POST") == n
    assert value(found, "requests_seconds_count", method="GET") == n
    assert value(found, "http_server_requests_seconds_count", outcome="bypass") == n


def test_uri_label_is_bounded() -> None:
    metrics = ProxyMetrics(uri_limit=3)
    for i in range(1000):
        metrics.observe("GET", 200, "miss", 0.001, f"/item/{i}?q={i}")
    registry = CollectorRegistry()
    registry.register(metrics.collector())
    from prometheus_client import generate_latest

    found = samples(generate_latest(registry).decode())
    uris = {lbl["uri"] for lbl, _ in found["requests_seconds_count"]}
    assert uris == {"/item/0", "/item/1", "/item/2", "OTHER"}
    assert value(found, "requests_seconds_count", uri="OTHER") == 997


@pytest.mark.slow
def test_a_scan_of_404s_never_takes_the_uri_slots_of_real_routes(tmp_path: Path) -> None:
    # A scanner right after start-up asks for many paths that do not exist; the routes the
    # dashboards show must still get their own uri label afterwards.
    with (
        BackendProcess(tmp_path) as backend,
        ProxyCluster(1, backend.url, tmp_path, env={"METRICS_URI_LIMIT": "3"}) as cluster,
    ):
        node = cluster.nodes[0]
        for i in range(10):
            url = f"{node.url}/scan/{i}?status=404"
            assert httpx.get(url, timeout=10).status_code == 404
        assert httpx.get(node.url + "/scan/9?status=503", timeout=10).status_code == 503
        assert httpx.get(node.url + "/prod/app", timeout=10).status_code == 200
        assert httpx.get(node.url + "/prod/app?status=404", timeout=10).status_code == 404
        found = samples(http_get(node.metrics_url)[1].decode())
    count = "requests_seconds_count"
    assert value(found, count, uri="/prod/app", status="200") == 1
    assert value(found, count, uri="/prod/app", status="404") == 1  # its slot, once claimed
    assert value(found, count, uri="NOT_FOUND") == 10
    assert value(found, count, uri="OTHER", status="503") == 1
    assert {lbl["uri"] for lbl, _ in found[count]} == {"/prod/app", "NOT_FOUND", "OTHER"}


@pytest.mark.parametrize(
    ("status", "outcome", "expected"),
    [
        (200, "hit", "SUCCESS"),
        (204, "miss", "SUCCESS"),
        (304, "bypass", "CLIENT_ERROR"),  # kubecache: any non-2xx below 500
        (404, "miss", "CLIENT_ERROR"),
        (500, "miss", "SERVER_ERROR"),
        (502, "error", "SERVER_ERROR"),
        (499, "error", "SERVER_ERROR"),  # a fault, whatever the status
    ],
)
def test_kubecache_outcome(status: int, outcome: str, expected: str) -> None:
    assert kubecache_outcome(status, outcome) == expected


def test_kubegroup_names_meanings_and_own_namespace() -> None:
    registry = CollectorRegistry()
    recorder = Recorder(registry, namespace="kg")
    recorder.seen(3)  # three pods match, two of them ready
    recorder.changed(2)
    recorder.changed(2)
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    assert "# TYPE kg_kubegroup_peers gauge" in text
    assert "kg_kubegroup_peers 3.0" in text  # Go: pods listed, ready or not
    assert "kg_kubegroup_events 2.0" in text  # Go's counter name, no _total
    assert "kg_kubegroup_events_total" not in text
