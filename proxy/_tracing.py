"""OpenTelemetry set-up from the standard ``OTEL_*`` variables (handed over by proxy._config).

Theory of operation: `build_tracer_provider` returns an SDK `TracerProvider`, or None when tracing
is off (``TRACE=false``), in which case every tracer the proxy and the engine use is the API's no-op
one, no exporter or propagator package is imported, and a request costs nothing for tracing.
`build_propagator` makes the text-map propagator named by ``OTEL_PROPAGATORS``. Recognised
variables (kubecache's, through udhos/otelconfig, plus the standard ones):

- ``OTEL_TRACES_EXPORTER``: ``otlp`` | ``console`` | ``none`` (comma-separated for several);
  ``jaeger`` (kubecache's chart default) is retired: one warning line names the replacement and
  the proxy serves without exporting. Default: ``otlp`` when an OTLP endpoint is set or
  ``OTELCONFIG_EXPORTER`` names an OTLP transport, else ``none`` (kubecache exported to
  localhost:4317 even with no collector there; spans are still created, so trace context
  propagates to the backend and peers).
- ``OTELCONFIG_EXPORTER`` (kubecache's own): ``grpc`` (its default) | ``http`` choose the OTLP
  transport, ``stdout`` is ``console``, ``jaeger`` is retired as above. Otherwise
  ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc`` |
  ``http/protobuf``), default ``grpc`` like kubecache.
- The exporters read their other ``OTEL_EXPORTER_OTLP_*`` variables (headers, timeout,
  certificates, compression) themselves, through the SDK's own environment handling. An ``http://``
  gRPC endpoint is plaintext, as kubecache's (``WithInsecure``) was.
- ``OTEL_PROPAGATORS``: any installed propagator (``tracecontext``, ``baggage``, ``b3``,
  ``b3multi``, ``jaeger``, ``xray``, ``ottrace``, ``none``); an unknown name is dropped with one
  warning line (kubecache's autoprop fell back the same way), never a crash.
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the standard sampler names; default
  ``parentbased_always_on``.
- ``OTEL_SERVICE_NAME`` (default ``tokencache-proxy``), ``OTEL_RESOURCE_ATTRIBUTES``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, TextIO, cast
from urllib.parse import unquote

from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from ._config import installed_propagators, propagator_names
from ._errors import ConfigError

SERVICE_NAME = "tokencache-proxy"
_log = logging.getLogger("proxy.tracing")

_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def client_sampled(traceparent: bytes | None) -> bool:
    """True when a W3C ``traceparent`` is well-formed and has the sampled flag set.

    Used only where the operator allowed clients to ask for spans (TRACE_CLIENT_SAMPLED_HITS).
    """
    if traceparent is None or _TRACEPARENT.fullmatch(traceparent.strip()) is None:
        return False
    return bool(int(traceparent.strip()[-2:], 16) & 1)


def build_sampler(otel: Mapping[str, str]) -> Sampler:
    """The sampler named by OTEL_TRACES_SAMPLER (+ _ARG for the ratio samplers)."""
    name = otel.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    ratio = 1.0
    if name.endswith("traceidratio"):
        arg = otel.get("OTEL_TRACES_SAMPLER_ARG", "1.0").strip() or "1.0"
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG: {arg!r} is not a ratio between 0 and 1")
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name in samplers:
        return samplers[name]
    # As the SDK does: other names come from installed packages' sampler entry points
    # (group opentelemetry_traces_sampler), called with OTEL_TRACES_SAMPLER_ARG.
    found = entry_points(group="opentelemetry_traces_sampler", name=name)
    if found:
        factory = next(iter(found)).load()
        return cast(Sampler, factory(otel.get("OTEL_TRACES_SAMPLER_ARG", "")))
    raise ConfigError(
        f"OTEL_TRACES_SAMPLER: {name!r} is not one of {', '.join(sorted(samplers))} "
        "nor an installed sampler (entry point group opentelemetry_traces_sampler)"
    )


def _resource(otel: Mapping[str, str]) -> Resource:
    attrs: dict[str, Any] = {}
    for pair in otel.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            # W3C Baggage octets, percent-encoded (the SDK's OTELResourceDetector decodes too)
            attrs[unquote(key.strip())] = unquote(value.strip())
    attrs["service.name"] = otel.get("OTEL_SERVICE_NAME", "").strip() or attrs.get(
        "service.name", SERVICE_NAME
    )
    return Resource.create(attrs)


JAEGER_RETIRED = (
    "the Jaeger exporter is retired (Jaeger accepts OTLP): spans are not exported; set "
    "OTEL_TRACES_EXPORTER=otlp, OTELCONFIG_EXPORTER=grpc and "
    "OTEL_EXPORTER_OTLP_ENDPOINT=http://<jaeger-collector>:4317"
)
_PROPAGATOR_GROUP = "opentelemetry_propagator"


def build_propagator(
    enabled: bool, otel: Mapping[str, str], *, log: logging.Logger | None = None
) -> TextMapPropagator:
    """The propagator OTEL_PROPAGATORS names; none at all when tracing is off (TRACE=false)."""
    if not enabled:
        return CompositePropagator([])
    usable, unknown = propagator_names(otel.get("OTEL_PROPAGATORS"))
    if unknown:
        (log or _log).warning(
            "OTEL_PROPAGATORS: %s not installed, ignored (installed: %s)",
            ", ".join(repr(n) for n in unknown),
            ", ".join(sorted(installed_propagators())),
        )
    if any(n.lower() == "none" for n in usable):
        return CompositePropagator([])
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=_PROPAGATOR_GROUP)}
    return CompositePropagator([eps[name].load()() for name in usable])


def _otlp_protocol(otel: Mapping[str, str]) -> str:
    chosen = otel.get("OTELCONFIG_EXPORTER", "").strip().lower()
    if chosen in ("grpc", "http"):
        return chosen
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = otel.get(name, "").strip().lower()
        if value:
            if value == "grpc":
                return "grpc"
            if value in ("http/protobuf", "http"):
                return "http"
            raise ConfigError(f"{name}: {value!r} is not one of grpc, http/protobuf")
    return "grpc"  # kubecache's (otelconfig's) default transport


def _otlp_exporter(otel: Mapping[str, str]) -> SpanExporter:
    protocol = _otlp_protocol(otel)
    package = f"opentelemetry-exporter-otlp-proto-{protocol}"
    module_name = f"opentelemetry.exporter.otlp.proto.{protocol}.trace_exporter"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: otlp over {protocol} needs the package {package}"
        ) from None
    endpoint = otel.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = otel.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "http":
        if not endpoint and base:
            endpoint = base.rstrip("/") + "/v1/traces"
        exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint or None)
        return exporter
    endpoint = endpoint or base
    insecure_set = any(
        otel.get(k, "").strip()
        for k in ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
    )
    # kubecache's gRPC client was WithInsecure: an http:// (or scheme-less) endpoint is plaintext.
    insecure = None if insecure_set else not endpoint.startswith("https://")
    exporter = module.OTLPSpanExporter(endpoint=endpoint or None, insecure=insecure)
    return exporter


def exporter_names(otel: Mapping[str, str]) -> tuple[str, ...]:
    """The exporters to build, after folding OTELCONFIG_EXPORTER into OTEL_TRACES_EXPORTER."""
    has_endpoint = any(
        otel.get(k, "").strip()
        for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    config = otel.get("OTELCONFIG_EXPORTER", "").strip().lower()
    if config not in ("", "grpc", "http", "jaeger", "stdout"):
        raise ConfigError(
            f"OTELCONFIG_EXPORTER: {config!r} is not one of grpc, http, stdout, jaeger (retired)"
        )
    default = "otlp" if has_endpoint or config in ("grpc", "http") else "none"
    if config == "jaeger":
        default = "jaeger"
    elif config == "stdout":
        default = "console"
    text = otel.get("OTEL_TRACES_EXPORTER", "").strip().lower() or default
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for name in names:
        if name not in ("otlp", "console", "none", "jaeger"):
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")
    # OTELCONFIG_EXPORTER=jaeger with OTEL_TRACES_EXPORTER=otlp: the OTLP choice wins, one line.
    if config == "jaeger" and "jaeger" not in names:
        names = (*names, "jaeger")
    return names


def build_tracer_provider(
    enabled: bool,
    otel: Mapping[str, str],
    *,
    console_out: TextIO | None = None,
    log: logging.Logger | None = None,
) -> TracerProvider | None:
    """A configured TracerProvider, or None when `enabled` is false (TRACE=false).

    `console_out` is where the console exporter writes (default stderr: stdout carries the logs).
    """
    if not enabled:
        return None
    names = exporter_names(otel)
    provider = TracerProvider(sampler=build_sampler(otel), resource=_resource(otel))
    for name in names:
        if name == "none":
            continue
        if name == "jaeger":
            (log or _log).warning("OTEL_TRACES_EXPORTER: %s", JAEGER_RETIRED)
        elif name == "console":
            exporter = ConsoleSpanExporter(
                out=console_out or sys.stderr,
                formatter=lambda span: span.to_json(indent=None) + "\n",  # one line per span
            )
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(otel)))
    return provider
