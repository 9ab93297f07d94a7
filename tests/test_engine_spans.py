"""The engine makes spans only when a tracer provider can receive them (`tokencache._spans`)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tokencache._spans import Spans


def test_no_provider_means_no_spans_and_no_cost() -> None:
    spans = Spans(trace.NoOpTracerProvider())
    assert not spans.on
    first = spans.span("tokencache.get")
    assert first is spans.span("tokencache.load")  # one shared null context, nothing made
    with first as span:
        assert span is None


def test_the_global_provider_is_asked_per_span(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = Spans()  # no provider of its own: the global one decides, whenever it is set
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    assert not spans.on
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert spans.on


def test_an_sdk_provider_gets_every_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = Spans(provider)
    assert spans.on
    with (
        spans.span("outer", attributes={"tokencache.group": "g"}),
        spans.span("inner", kind=trace.SpanKind.CLIENT),
    ):
        pass
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert set(finished) == {"outer", "inner"}
    assert finished["inner"].parent is not None
    assert finished["inner"].parent.span_id == finished["outer"].context.span_id
    assert finished["outer"].attributes == {"tokencache.group": "g"}
