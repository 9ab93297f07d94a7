"""Trace context across the peer hop, with OpenTelemetry's global propagator imported late.

``opentelemetry.propagate`` builds its propagator from ``OTEL_PROPAGATORS`` when it is first
imported and raises on a name whose package is not installed (kubecache's chart sets
``b3multi``). A library must not fail to import, or fail its peer requests, because of that
variable: so the module is imported on first use (after an application such as the proxy has
checked the variable), and an unusable setting falls back to W3C trace context.
"""

from __future__ import annotations

import functools
from collections.abc import MutableMapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_FALLBACK = TraceContextTextMapPropagator()  # stateless: a constant, not process state


@functools.cache  # one import attempt: a failed import searches the whole module path
def _propagator() -> Any:
    try:
        from opentelemetry import propagate
    except ValueError:  # an OTEL_PROPAGATORS name that is not installed
        return _FALLBACK
    return propagate


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current trace context into ``carrier`` (the outgoing peer request's fields)."""
    _propagator().inject(carrier)


def extract(carrier: MutableMapping[str, str]) -> Context:
    """The trace context a peer sent in ``carrier``."""
    result: Context = _propagator().extract(carrier)
    return result
