"""kubecache's OpenTelemetry settings: every propagator it accepted, OTLP over gRPC and HTTP, and
the retired Jaeger exporter (one line, keeps serving).

kubecache (udhos/otelconfig) took the exporter from ``OTELCONFIG_EXPORTER`` (``grpc`` by default,
``http``, ``jaeger``, ``stdout``) and the propagators from ``OTEL_PROPAGATORS`` through Go's
autoprop (tracecontext, baggage, b3, b3multi, jaeger, xray, ottrace, none). Its chart's defaults
are ``OTELCONFIG_EXPORTER=jaeger``, ``OTEL_TRACES_EXPORTER=jaeger``, ``OTEL_PROPAGATORS=b3multi``.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from tests.support.proxy_cluster import REPO, BackendProcess, ProxyCluster, base_env, http_get
from tokencache.proxy import ConfigError
from tokencache.proxy._tracing import (
    JAEGER_RETIRED,
    build_propagator,
    build_tracer_provider,
    exporter_names,
)

KUBECACHE_OTEL = {
    "OTELCONFIG_EXPORTER": "jaeger",
    "OTEL_TRACES_EXPORTER": "jaeger",
    "OTEL_PROPAGATORS": "b3multi",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger-collector:14268",
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.01",
}

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0x00F067AA0BA902B7


def _injected(names: str) -> dict[str, str]:
    propagator = build_propagator(True, {"OTEL_PROPAGATORS": names})
    ctx = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(1)))
    )
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=ctx)
    return carrier


@pytest.mark.parametrize(
    ("names", "header"),
    [
        ("tracecontext", "traceparent"),
        ("b3", "b3"),
        ("b3multi", "x-b3-traceid"),
        ("jaeger", "uber-trace-id"),
        ("xray", "X-Amzn-Trace-Id"),
        ("ottrace", "ot-tracer-traceid"),
    ],
)
def test_every_propagator_kubecache_accepted_injects_its_header(names: str, header: str) -> None:
    carrier = _injected(names)
    assert header in carrier, carrier
    assert "0af7651916cd43dd" in carrier[header].lower() or "8448eb211c80319c" in carrier[header]


def test_propagator_list_and_none() -> None:
    carrier = _injected("tracecontext, baggage, b3multi")
    assert {"traceparent", "x-b3-traceid"} <= set(carrier)
    assert _injected("none") == {}


def test_unknown_propagator_is_one_warning_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        carrier = _injected("b3multi,nosuch")
    assert "x-b3-traceid" in carrier
    [line] = [r.getMessage() for r in caplog.records if "OTEL_PROPAGATORS" in r.getMessage()]
    assert "'nosuch' not installed" in line


def test_trace_false_propagates_nothing() -> None:
    propagator = build_propagator(False, {"OTEL_PROPAGATORS": "b3multi"})
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(1)))
    )
    propagator.inject(carrier, context=ctx)
    assert carrier == {}


@pytest.mark.parametrize("value", ["b3multi", "jaeger,xray", "nosuch", "b3multi,nosuch"])
@pytest.mark.parametrize("trace_on", ["true", "false"])
def test_import_and_help_never_crash_on_propagators(value: str, trace_on: str) -> None:
    env = base_env({"OTEL_PROPAGATORS": value, "TRACE": trace_on})
    for args in (
        ["-c", "import tokencache"],
        ["-c", "import tokencache.proxy"],
        ["-m", "tokencache.proxy", "--help"],
    ):
        done = subprocess.run(
            [sys.executable, *args], env=env, capture_output=True, timeout=60, cwd=REPO
        )
        assert done.returncode == 0, done.stderr.decode()


def test_trace_false_never_imports_exporters_or_propagators() -> None:
    code = (
        "import sys, proxy\n"
        "from tokencache.proxy._config import Settings\n"
        "from tokencache.proxy._tracing import build_propagator, build_tracer_provider\n"
        "s = Settings.from_env()\n"
        "assert build_tracer_provider(s.trace, s.otel) is None\n"
        "build_propagator(s.trace, s.otel)\n"
        "bad = [m for m in sys.modules if m.startswith(('opentelemetry.exporter',"
        " 'opentelemetry.propagators.b3', 'opentelemetry.propagators.jaeger'))]\n"
        "assert not bad, bad\n"
    )
    env = base_env({"TRACE": "false", "BACKEND_URL": "http://127.0.0.1:1", **KUBECACHE_OTEL})
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.parametrize(
    ("otel", "names"),
    [
        (KUBECACHE_OTEL, ("jaeger",)),
        ({"OTELCONFIG_EXPORTER": "grpc"}, ("otlp",)),
        ({"OTELCONFIG_EXPORTER": "http", "OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTELCONFIG_EXPORTER": "stdout"}, ("console",)),
        ({"OTELCONFIG_EXPORTER": "jaeger", "OTEL_TRACES_EXPORTER": "otlp"}, ("otlp", "jaeger")),
        ({}, ("none",)),
    ],
)
def test_exporter_choice(otel: dict[str, str], names: tuple[str, ...]) -> None:
    assert exporter_names(otel) == names


def test_unknown_otelconfig_exporter_is_refused() -> None:
    # kubecache stopped on it too (otelconfig: "unrecognized exporter type").
    with pytest.raises(ConfigError, match=r"^OTELCONFIG_EXPORTER: 'zipkin' is not one of"):
        exporter_names({"OTELCONFIG_EXPORTER": "zipkin"})


def test_jaeger_is_one_line_naming_the_replacement(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        provider = build_tracer_provider(True, KUBECACHE_OTEL)
    assert provider is not None
    provider.shutdown()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"OTEL_TRACES_EXPORTER: {JAEGER_RETIRED}"]
    assert "OTEL_TRACES_EXPORTER=otlp" in lines[0] and ":4317" in lines[0]


# --- the OTLP transports against local receivers ------------------------------------------------


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.got = threading.Event()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                self.names.extend(s.name for s in ss.spans)
        self.got.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_collector() -> Iterator[tuple[_Collector, int]]:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, port
    finally:
        server.stop(grace=None).wait(5)


def test_otlp_grpc_default_transport_exports(grpc_collector: tuple[_Collector, int]) -> None:
    collector, port = grpc_collector
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    provider = build_tracer_provider(True, otel)
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("over-grpc"):
        pass
    assert provider.force_flush(10_000)
    provider.shutdown()
    assert collector.got.wait(10)
    assert collector.names == ["over-grpc"]


def test_otlp_http_transport_exports() -> None:
    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        otel = {
            "OTELCONFIG_EXPORTER": "http",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        }
        provider = build_tracer_provider(True, otel)
        assert provider is not None
        with provider.get_tracer("t").start_as_current_span("over-http"):
            pass
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    [(path, body)] = received
    assert path == "/v1/traces"
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "over-http"


def test_console_still_writes_one_line_per_span() -> None:
    out = io.StringIO()
    provider = build_tracer_provider(True, {"OTELCONFIG_EXPORTER": "stdout"}, console_out=out)
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("one"):
        pass
    provider.shutdown()
    assert out.getvalue().count("\n") == 1


@pytest.mark.slow
def test_kubecache_otel_defaults_start_and_serve(tmp_path: Path) -> None:
    # kubecache's chart defaults, with a dead Jaeger endpoint: the proxy serves, one line says why
    # nothing is exported, and the backend sees b3 multi-header propagation.
    with BackendProcess(tmp_path) as backend:
        cluster = ProxyCluster(1, backend.url, tmp_path, env=dict(KUBECACHE_OTEL))
        with cluster:
            node = cluster.nodes[0]
            status, _, _ = http_get(node.url + "/otel/compat")
            assert status == 200
        log = node.log_text()
    assert log.count(JAEGER_RETIRED) == 1
    assert "Traceback" not in log


def test_settings_carry_otelconfig_exporter_to_the_tracer() -> None:
    # The real start-up path: Settings.from_env hands the tracer only what it kept of the
    # environment; kubecache's OTELCONFIG_EXPORTER must be part of it.
    from tokencache.proxy import Settings

    env = {"BACKEND_URL": "http://backend.example", "OTELCONFIG_EXPORTER": "http"}
    assert Settings.from_env(env).otel.get("OTELCONFIG_EXPORTER") == "http"
    with pytest.raises(ConfigError, match="OTELCONFIG_EXPORTER"):
        exporter_names(Settings.from_env({**env, "OTELCONFIG_EXPORTER": "zipkin"}).otel)


@pytest.mark.slow
def test_proxy_process_exports_over_http_when_otelconfig_says_http(tmp_path: Path) -> None:
    # kubecache values.yaml's "OTLP HTTP" block, started as a real proxy: spans reach the
    # collector's /v1/traces over HTTP (not gRPC, the default transport).
    received: list[str] = []
    got = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(self.path)
            got.set()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {
        "OTELCONFIG_EXPORTER": "http",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_PROPAGATORS": "b3multi",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    try:
        with (
            BackendProcess(tmp_path) as backend,
            ProxyCluster(1, backend.url, tmp_path, env=env) as cluster,
        ):
            status, _, _ = http_get(cluster.nodes[0].url + "/otel/over-http")
            assert status == 200
            assert got.wait(15), cluster.nodes[0].log_text()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert "/v1/traces" in received
