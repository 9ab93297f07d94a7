"""Scenario 7: nothing leaks — marker secrets and real access tokens never show up anywhere.

Three proxies (peer secret, OAuth2 client secret: both markers) in front of a backend that checks
tokens at the real authorization server, plus a fourth proxy with a wrong client secret (a marker
too) for the error paths. Spans go to the console exporter, so stdout/stderr of every process holds
logs and spans; /metrics of every node is scraped. The access tokens the AS issued are read from
the backend's /echo answers; none of them, nor any secret, may appear in what was captured.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support import peer_wire as pw
from tests.support.chaos_load import scrape
from tests.support.oauth_server import OAuthClient, OAuthServer
from tests.support.proxy_cluster import BackendProcess, ProxyCluster

pytestmark = pytest.mark.slow


async def test_secrets_and_tokens_appear_in_no_log_metric_or_span(tmp_path: Path) -> None:
    client_secret = f"MARKER-client-{uuid.uuid4().hex}"
    peer_secret = f"MARKER-peer-{uuid.uuid4().hex}"
    wrong_secret = f"MARKER-wrong-{uuid.uuid4().hex}"
    backend_secret = "backend-introspection-secret"
    (tmp_path / "introspect").write_text(backend_secret)
    clients = [
        OAuthClient("proxy", client_secret, scopes=["read"]),
        OAuthClient("demo-backend", backend_secret),
    ]
    common = {
        "OTEL_TRACES_EXPORTER": "console",
        "TRACE": "true",
        "DEBUG_LOG": "true",
        "OAUTH2_CLIENT_ID": "proxy",
        "OAUTH2_SCOPE": "read",
    }
    tokens: set[str] = set()
    captured: list[str] = []
    with OAuthServer(clients, token_ttl=600) as oauth:
        args = (
            "--introspect-url",
            oauth.issuer + "/token/introspection",
            "--introspect-client",
            "demo-backend",
            "--introspect-secret-file",
            str(tmp_path / "introspect"),
        )
        with BackendProcess(tmp_path, *args) as backend:
            env = {
                **common,
                "OAUTH2_TOKEN_URL": oauth.token_url,
                "OAUTH2_CLIENT_SECRET": client_secret,
            }
            (tmp_path / "good").mkdir(exist_ok=True)
            (tmp_path / "bad").mkdir(exist_ok=True)
            good = ProxyCluster(3, backend.url, tmp_path / "good", env=env, peer_secret=peer_secret)
            bad = ProxyCluster(
                1, backend.url, tmp_path / "bad", env={**env, "OAUTH2_CLIENT_SECRET": wrong_secret}
            )
            try:
                good.start()
                bad.start()
                async with httpx.AsyncClient(timeout=20, trust_env=False) as client:
                    for i, node in enumerate(good.nodes):
                        echo = await client.get(
                            f"{node.url}/echo?n={i}",
                            headers={
                                "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
                            },
                        )
                        assert echo.status_code == 200
                        for name, value in echo.json()["headers"]:
                            if name.lower() == "authorization":
                                tokens.add(value.split()[-1])
                        for j in range(10):
                            assert (await client.get(f"{node.url}/p/{j}")).status_code == 200
                        # a forged peer request: refused and logged (without any secret)
                        assert await asyncio.to_thread(_forged_peer_request, node.peer_port)
                    failed = await client.get(bad.nodes[0].url + "/needs-token")
                    assert failed.status_code >= 500
                    for node in (*good.nodes, *bad.nodes):
                        captured.append(scrape(node.metrics_url))
            finally:
                good.stop()
                bad.stop()
            captured.append(good.logs())
            captured.append(bad.logs())
            captured.append((tmp_path / "backend.log").read_text(errors="replace"))
    text = "\n".join(captured)
    assert tokens, "no access token was issued: the scenario did not exercise the plugin"
    assert '"trace_id"' in text, "no span was exported: the span check would prove nothing"
    for marker in (client_secret, peer_secret, wrong_secret, *tokens):
        assert marker not in text, f"a secret or token leaked (marker {marker[:12]}…)"
    assert "groupcache_gets_total" in text or "groupcache_gets" in text


def _forged_peer_request(port: int) -> bool:
    """A peer connection without the secret: refused in the hello (status 3), nothing served."""
    with pw.WireClient(port, None, timeout=10) as c:
        try:
            c.handshake()
        except pw.WireError as exc:
            return "status 3" in str(exc)
    return False
