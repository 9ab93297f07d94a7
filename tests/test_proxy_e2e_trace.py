"""Black-box test of tracing: one request through a non-owner yields one trace on both processes.

Both proxies export spans with ``OTEL_TRACES_EXPORTER=console`` (one JSON line per span, on
stderr, which the cluster helper writes to each node's log file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import tokencache
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, ProxyNode

pytestmark = pytest.mark.slow


def spans(node: ProxyNode) -> list[dict[str, Any]]:
    out = []
    for line in node.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "context" in record:
            out.append(record)
    return out


def test_peer_hop_continues_the_trace_on_the_owner(tmp_path: Path) -> None:
    target = "/traced/item-1"
    with BackendProcess(tmp_path) as backend:
        cluster = ProxyCluster(2, backend.url, tmp_path, env={"OTEL_TRACES_EXPORTER": "console"})
        with cluster:
            peers = [n.peer_url for n in cluster.nodes]
            owner = peers.index(tokencache.Ring(peers).owner(f"GET {target}") or "")
            caller = cluster.nodes[1 - owner]
            r = httpx.get(caller.url + target, timeout=15)
            assert r.status_code == 200
        # Stopped: every span has been written.
        caller_spans, owner_spans = spans(caller), spans(cluster.nodes[owner])
    [server] = [s for s in caller_spans if s["kind"] == "SpanKind.SERVER"]
    assert server["attributes"]["url.path"] == target
    trace_id = server["context"]["trace_id"]
    assert {s["context"]["trace_id"] for s in caller_spans} == {trace_id}
    fetch = [s for s in caller_spans if s["kind"] == "SpanKind.CLIENT"]
    assert fetch, "the peer hop is a client span on the caller"
    on_owner = [s for s in owner_spans if s["context"]["trace_id"] == trace_id]
    assert any(s["kind"] == "SpanKind.SERVER" for s in on_owner), "the owner continues the trace"
    # The owner's server span is a child of the caller's client span.
    client_ids = {s["context"]["span_id"] for s in fetch}
    assert any(s["parent_id"] in client_ids for s in on_owner)
