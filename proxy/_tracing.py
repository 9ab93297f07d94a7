"""OpenTelemetry set-up from the standard ``OTEL_*`` variables (handed over by proxy._config).

Theory of operation: `build_tracer_provider` returns an SDK `TracerProvider`, or None when tracing
is off (``TRACE=false``), in which case every tracer the proxy and the engine use is the API's no-op
one and a request costs nothing for tracing. Recognised variables:

- ``OTEL_TRACES_EXPORTER``: ``otlp`` | ``console`` | ``none`` (comma-separated for several).
  Default: ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
  set, else ``none`` (spans are still created, so trace context propagates to the backend and peers).
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the standard sampler names; default
  ``parentbased_always_on``.
- ``OTEL_SERVICE_NAME`` (default ``tokencache-proxy``), ``OTEL_RESOURCE_ATTRIBUTES``.

The OTLP exporter is the optional extra ``tokencache[otlp]``; asking for it without the package is
a `ConfigError`, not a silent no-op.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

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

from ._errors import ConfigError

SERVICE_NAME = "tokencache-proxy"

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
    if name not in samplers:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER: {name!r} is not one of {', '.join(sorted(samplers))}"
        )
    return samplers[name]


def _resource(otel: Mapping[str, str]) -> Resource:
    attrs: dict[str, Any] = {}
    for pair in otel.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attrs[key.strip()] = value.strip()
    attrs["service.name"] = otel.get("OTEL_SERVICE_NAME", "").strip() or attrs.get(
        "service.name", SERVICE_NAME
    )
    return Resource.create(attrs)


def _otlp_exporter(otel: Mapping[str, str]) -> SpanExporter:
    try:
        module = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER: otlp needs the package opentelemetry-exporter-otlp-proto-http "
            "(pip install 'tokencache[otlp]')"
        ) from None
    endpoint = otel.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if not endpoint and otel.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        endpoint = otel["OTEL_EXPORTER_OTLP_ENDPOINT"].strip().rstrip("/") + "/v1/traces"
    exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint or None)
    return exporter


def build_tracer_provider(
    enabled: bool, otel: Mapping[str, str], *, console_out: TextIO | None = None
) -> TracerProvider | None:
    """A configured TracerProvider, or None when `enabled` is false (TRACE=false).

    `console_out` is where the console exporter writes (default stderr: stdout carries the logs).
    """
    if not enabled:
        return None
    has_endpoint = any(
        otel.get(k, "").strip()
        for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    names = otel.get("OTEL_TRACES_EXPORTER", "").strip().lower() or (
        "otlp" if has_endpoint else "none"
    )
    provider = TracerProvider(sampler=build_sampler(otel), resource=_resource(otel))
    for name in (n.strip() for n in names.split(",")):
        if name == "none" or not name:
            continue
        if name == "console":
            exporter = ConsoleSpanExporter(
                out=console_out or sys.stderr,
                formatter=lambda span: span.to_json(indent=None) + "\n",  # one line per span
            )
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(otel)))
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")
    return provider
