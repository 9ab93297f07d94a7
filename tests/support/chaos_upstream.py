"""Scenario 4: the backend and the token server fail (down, slow, 5xx, 429 + Retry-After).

Backend faults run one proxy with a short CACHE_TTL and stale-if-error in front of the counting
backend, which is then made slow, made to answer 5xx, and stopped. Token faults run one proxy with
OAuth2 against the real authorization server (tests/support/oauth_server.py) and its fault-control
API, send a burst of cache misses (each one needs a token) during each outage and count the token
requests that reached the server: they must be bounded by the plugin's cooldown and Retry-After,
not by how many client requests arrived.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.support.chaos_figures import Report
from tests.support.chaos_load import Outcome, Targets, run_load
from tests.support.oauth_server import OAuthClient, OAuthServer
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, http_get, wait_until

__all__ = ["backend_faults", "token_faults"]

_CLIENT_SECRET = "upstream-client-secret"


async def backend_faults(workdir: Path, *, stale_requests: int = 20) -> Report:
    """Backend 5xx, slow (past BACKEND_TIMEOUT) and down, with stale-if-error for a warm key."""
    report = Report("4a backend faults", "CACHE_TTL=1s CACHE_STALE_IF_ERROR=60s BACKEND_TIMEOUT=1s")
    run = uuid.uuid4().hex[:8]
    env = {"CACHE_TTL": "1s", "CACHE_STALE_IF_ERROR": "60s", "BACKEND_TIMEOUT": "1s"}
    backend = BackendProcess(workdir)
    cluster = ProxyCluster(1, "", workdir, env=env)
    try:
        backend.start()
        cluster.nodes[0].env["BACKEND_URL"] = backend.url
        node = cluster.start().nodes[0]
        warm = f"/warm/{run}"
        first = http_get(node.url + warm)
        status_5xx = http_get(node.url + f"/e/{run}?status=503")[0]
        began = time.monotonic()
        status_slow = http_get(node.url + f"/slow/{run}?delay=5", timeout=15)[0]
        slow_took = time.monotonic() - began
        backend.stop()

        def stale() -> bool:
            _, _, headers = http_get(node.url + warm)
            return "stale" in headers.get("Cache-Status", "")

        wait_until(stale, 10.0, "stale answer once the warm key expired")
        answers = [http_get(node.url + warm) for _ in range(stale_requests)]
        cold = http_get(node.url + f"/cold/{run}")
    finally:
        cluster.stop()
        backend.stop()
    served_stale = [a for a in answers if a[0] == 200 and a[1] == first[1]]
    marked = [a for a in answers if "stale" in a[2].get("Cache-Status", "")]
    report.add("backend 503 → client status", status_5xx, "503 (passed on)", status_5xx == 503)
    report.add("backend slower than timeout → status", status_slow, "504", status_slow == 504)
    report.add("… answered after, s", round(slow_took, 2), "~BACKEND_TIMEOUT", slow_took < 5.0)
    report.add(
        "backend down: stale responses served",
        len(served_stale),
        f"{stale_requests}",
        len(served_stale) == stale_requests,
    )
    report.add(
        "… of them marked stale in Cache-Status",
        len(marked),
        f"{stale_requests}",
        len(marked) == stale_requests,
    )
    report.add("backend down, nothing cached → status", cold[0], "502", cold[0] == 502)
    return report


async def _burst(url: str, duration: float, max_requests: int) -> list[Outcome]:
    paths = [
        f"/t/{uuid.uuid4().hex}" for _ in range(max_requests)
    ]  # all misses: each needs a token
    return await run_load(
        Targets([url], paths), duration=duration, max_requests=max_requests, concurrency=4
    )


async def token_faults(workdir: Path, *, duration: float = 4.0, max_requests: int = 400) -> Report:
    """Token endpoint 429 + Retry-After, 503, reset (down), slow; token requests per outage."""
    report = Report("4b token server faults", f"burst={duration}s x <= {max_requests} misses")
    backend = BackendProcess(workdir)
    oauth = OAuthServer([OAuthClient("proxy", _CLIENT_SECRET, scopes=["read"])], token_ttl=600)
    cluster = ProxyCluster(
        1,
        "",
        workdir,
        env={
            "OAUTH2_CLIENT_ID": "proxy",
            "OAUTH2_CLIENT_SECRET": _CLIENT_SECRET,
            "OAUTH2_SCOPE": "read",
            "BACKEND_TIMEOUT": "30s",
        },
    )
    try:
        backend.start()
        oauth.start()
        cluster.nodes[0].env.update(
            {"BACKEND_URL": backend.url, "OAUTH2_TOKEN_URL": oauth.token_url}
        )
        url = cluster.start().nodes[0].url
        cases: list[tuple[str, Callable[[], object], str, int]] = [
            ("429 Retry-After=2", lambda: oauth.set_fault(status=429, retry_after=2), "", 2),
            ("503", lambda: oauth.set_fault(status=503), "", 2),
            ("connection reset (down)", lambda: oauth.set_fault(mode="reset"), "", 2),
        ]
        for name, arm, _, pause in cases:
            oauth.reset()
            arm()
            outcomes = await _burst(url, duration, max_requests)
            sent = oauth.token_requests()
            oauth.clear_fault()
            # Per cooldown window at most one fetch of up to max_attempts (3) tries.
            bound = 3 * (int(duration / pause) + 2)
            statuses = sorted({o.status or 0 for o in outcomes})
            report.add(f"{name}: client requests", len(outcomes))
            report.add(
                f"{name}: max client latency, s",
                max((o.latency for o in outcomes), default=0.0),
                "",
                None,
                "a fetch retries up to 3 times, honouring Retry-After",
            )
            report.add(f"{name}: token requests sent", sent, f"<= {bound}", sent <= bound)
            report.add(
                f"{name}: client statuses",
                str(statuses),
                "[502] or [502, 504]",
                set(statuses) <= {502, 504} and not any(o.hung for o in outcomes),
            )
        oauth.reset()
        # Poll (bounded) until the last cooldown has run out; recovery then costs one token request.
        await asyncio.to_thread(
            wait_until,
            lambda: http_get(url + f"/probe/{uuid.uuid4().hex}")[0] == 200,
            15.0,
            "recovery",
        )
        recovered = await _burst(url, 2.0, 20)
        report.add(
            "after recovery: 200s",
            sum(o.ok for o in recovered),
            f"{len(recovered)}",
            all(o.ok for o in recovered) and bool(recovered),
        )
        report.add(
            "after recovery: token requests",
            oauth.token_requests(),
            "1",
            oauth.token_requests() == 1,
        )
        oauth.reset()
        oauth.set_fault(mode="none", delay_ms=3000)
        cluster_token_cached = await _burst(url, 2.0, 20)
        report.add(
            "slow token server, token cached: token requests",
            oauth.token_requests(),
            "0",
            oauth.token_requests() == 0,
        )
        report.add(
            "slow token server, token cached: errors",
            sum(not o.ok for o in cluster_token_cached),
            "0",
            all(o.ok for o in cluster_token_cached),
        )
    finally:
        cluster.stop()
        oauth.stop()
        backend.stop()
    return report
